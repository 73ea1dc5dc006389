"""A writer or a reader process for the concurrency test (``test_store_concurrency.py``).

    python store_worker.py writer URL RUN N        record N trials one by one, re-report some,
                                                   save a profile every 25 trials
    python store_worker.py reader URL RUN N STOP   read in a loop until the file STOP exists

Each prints one JSON line on success and exits 0; any exception (a "database is locked"
included) makes it exit 1 with the traceback on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time

from sampleattn.store import ProfileNotFoundError, ProfileStore


def writer(url: str, run: str, count: int) -> dict:
    with ProfileStore(url) as store:
        for number in range(count):
            metrics = {"rel_error": (number * 37 % 101) / 1000, "latency_ms": 1 + (number * 53 % 97) / 10,
                       "dense_latency_ms": 12.0, "latency_measured": False}
            store.record_trial(run, number, seq_len="8k", state="running", worker=f"actor-{number % 4}")
            store.record_trial(run, number, seq_len="8k", state="complete", params={"alpha": 0.9},
                               metrics=metrics, worker=f"actor-{number % 4}", duration_s=0.01)
            if number % 25 == 24:
                store.save_profile("llama-toy", "8k", {"config": {"alpha": 0.9 + number / 10000}}, run=run,
                                   metrics=metrics)
        for number in range(0, count, 10):  # a resumed driver re-reports some trials
            store.record_trial(run, number, seq_len="8k", state="complete", params={"alpha": 0.9},
                               metrics={"rel_error": 0.05, "latency_ms": 2.0}, worker="resumed")
        store.finish_run(run)
    return {"written": count}


def reader(url: str, run: str, count: int, stop: str) -> dict:
    iterations = seen = 0
    partial = set()  # trial counts seen while the writer was still writing
    store = ProfileStore(url, readonly=True)
    try:
        while True:
            done = os.path.exists(stop)
            if iterations % 5 == 0:  # now and then, open the store afresh (schema check included)
                store.close()
                store = ProfileStore(url, readonly=True)
            trials = store.trials(run)
            numbers = [t.number for t in trials]
            if len(numbers) != len(set(numbers)):
                raise AssertionError(f"duplicate trials: {numbers}")
            if len(trials) < seen:
                raise AssertionError(f"trials went from {seen} to {len(trials)}")
            seen = len(trials)
            if 0 < seen < count:
                partial.add(seen)
            store.pareto("llama-toy", "8k")
            store.list_profiles()
            try:
                store.get_profile("llama-toy", "8k")
            except ProfileNotFoundError:
                pass  # before the writer's first profile
            iterations += 1
            if done:
                break
            time.sleep(0.002)
    finally:
        store.close()
    return {"iterations": iterations, "seen": seen, "partial": len(partial)}


if __name__ == "__main__":
    role, url, run, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    result = writer(url, run, count) if role == "writer" else reader(url, run, count, sys.argv[5])
    print(json.dumps(result))
