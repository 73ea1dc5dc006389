"""``sattn-tune`` as a user runs it: exit codes, clear errors, and resume after a kill.

The resume test runs the real command in a subprocess joined to the session's Ray cluster
(``--ray-address``), kills it with SIGKILL once some trials are recorded, runs the same
command again, and checks that the trial numbers go on with nothing lost or duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sampleattn.tuner.cli import main

MODEL = "smollm2-135m"


def _run(args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "sampleattn.tuner", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_unknown_model_is_a_usage_error(capsys):
    assert main(["--model", "no-such-model", "--lengths", "1k"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "smollm2-135m" in err


def test_bad_arguments_exit_2():
    result = _run(["--model", MODEL, "--lengths", "12q"])
    assert result.returncode == 2 and "--lengths" in result.stderr
    result = _run(["--model", MODEL, "--lengths", "1k", "--objective", "loss"])
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_bad_option_combinations_exit_2(capsys):
    assert main(["--model", MODEL, "--lengths", "1k", "--calibration", "synthetic", "--objective", "model"]) == 2
    assert "needs real text" in capsys.readouterr().err
    assert main(["--model", MODEL, "--lengths", "1k", "--calibration", "/no/such/file.txt"]) == 2
    assert "neither essays" in capsys.readouterr().err
    assert main(["--model", MODEL, "--lengths", "1k", "--layers", "40", "--calibration", "synthetic"]) == 2
    assert "layers 0..29" in capsys.readouterr().err


def test_missing_weights_fail_at_once(empty_hf_cache, tmp_path):
    started = time.monotonic()
    result = _run(["--model", "llama3", "--lengths", "32k", "--store", str(tmp_path / "s.sqlite")])
    assert result.returncode == 1
    assert "--model-path" in result.stderr  # says how to provide the weights
    result = _run(["--model", MODEL, "--lengths", "1k", "--model-path", str(tmp_path / "nowhere"),
                   "--store", str(tmp_path / "s.sqlite")])
    assert result.returncode == 1 and "nowhere" in result.stderr
    assert time.monotonic() - started < 60  # no download attempt, no model load
    assert not (tmp_path / "s.sqlite").exists()  # nothing started


@pytest.mark.slow
def test_resume_after_kill(ray_cluster, tmp_path):
    store_path = tmp_path / "store.sqlite"
    args = ["--model", MODEL, "--lengths", "2k", "--trials", "10", "--calibration", "synthetic", "--samples", "1",
            "--layers", "0-3", "--device", "cpu", "--store", str(store_path), "--ray-address", ray_cluster,
            "--no-progress"]
    run = f"{MODEL}/2k/layer/synthetic-x1/cpu/layers=0,1,2,3"
    proc = subprocess.Popen([sys.executable, "-m", "sampleattn.tuner", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    from sampleattn.store import ProfileStore

    deadline = time.monotonic() + 150
    killed_with = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not store_path.exists():
                continue
            try:
                with ProfileStore(store_path, readonly=True) as store:
                    if store.find_run(run) is None:
                        continue
                    states = [t.state for t in store.trials(run)]
            except Exception:  # noqa: BLE001 - the writer may be creating it
                continue
            if states.count("complete") >= 2 and "running" in states:
                os.kill(proc.pid, signal.SIGKILL)
                killed_with = states
                break
    finally:
        if proc.poll() is None and killed_with is None:
            proc.kill()
        output = proc.communicate(timeout=30)[0]
    assert killed_with is not None, f"the run ended before it could be killed:\n{output[-3000:]}"

    result = _run(args, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "re-queued" in result.stdout
    assert f"run:   {run}" in result.stdout and "latency_ms (estimated)" in result.stdout  # the summary

    with ProfileStore(store_path, readonly=True) as store:
        trials = store.trials(run)
        numbers = [t.number for t in trials]
        assert numbers == list(range(len(numbers)))  # trial numbers go on, none duplicated
        interrupted = [t for t in trials if t.state == "failed" and t.error_message.startswith("interrupted")]
        evaluated = [t for t in trials if t not in interrupted]
        # The trials running at the kill: at least the one seen running (unless it finished in
        # the same instant, then its successor), at most one per worker (2 on the CPU), since
        # a worker may start a new trial between the look at the store and the kill.
        assert killed_with.count("running") >= 1
        assert 1 <= len(interrupted) <= 2
        assert len(evaluated) == 10 and all(t.state == "complete" for t in evaluated)
        assert len(trials) == 10 + len(interrupted)
        # Each interrupted trial that had gone to a worker (it has a profile) was re-queued and
        # its parameters evaluated again later. One killed while Optuna was still sampling it
        # did no work: it holds some parameters at most, and is not re-queued (the sampler
        # proposes again), unless it was an enqueued trial, whose whole set is re-queued.
        for t in interrupted:
            if "re-queued" in t.error_message:
                assert any(e.number > t.number and all(e.params.get(k) == v for k, v in t.params.items())
                           for e in evaluated)
            else:
                assert t.config is None, t
        assert store.get_run(run).status == "complete"
        assert store.get_profile(MODEL, "2k", allow_synthetic=True).run == run
