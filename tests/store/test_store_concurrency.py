"""One writer process records trials while reader processes read: nothing lost, no lock errors."""

from __future__ import annotations

import json
import subprocess
import sys

from store_helpers import HERE, add_model, add_run

from sampleattn.store import ProfileStore

TRIALS = 150
READERS = 3


def test_readers_while_the_writer_writes(store, store_url, tmp_path):
    add_model(store)
    run = add_run(store, lengths=("8k",))
    store.close()
    stop = tmp_path / "stop"
    worker = str(HERE / "store_worker.py")
    readers = [
        subprocess.Popen([sys.executable, worker, "reader", store_url, run.name, str(TRIALS), str(stop)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(READERS)
    ]
    writer = subprocess.run([sys.executable, worker, "writer", store_url, run.name, str(TRIALS)],
                            capture_output=True, text=True, timeout=120)
    stop.touch()
    outputs = [reader.communicate(timeout=60) for reader in readers]
    assert writer.returncode == 0, writer.stderr
    results = []
    for reader, (out, err) in zip(readers, outputs):
        assert reader.returncode == 0, err
        assert "locked" not in err
        results.append(json.loads(out))
        assert results[-1]["seen"] == TRIALS  # the last read, after the writer finished, sees everything
    # The readers did read while the writer wrote (they saw counts between 0 and TRIALS).
    assert sum(r["partial"] for r in results) >= READERS, results
    with ProfileStore(store_url, readonly=True) as reader:
        trials = reader.trials(run)
        assert [t.number for t in trials] == list(range(TRIALS))
        assert all(t.state == "complete" for t in trials)
        assert sum(t.worker == "resumed" for t in trials) == TRIALS // 10
        assert reader.get_run(run.name).status == "complete"
        assert reader.get_profile("llama-toy", "8k").config.config.alpha == 0.9 + 149 / 10000
