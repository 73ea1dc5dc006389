"""A pytest plugin for the suite's console output (registered by tests/conftest.py).

* Time left: at the start of each test file, after its name, ``[1 min 10 s so far, ~4 min
  left]``. The estimate sums the durations the same tests took in the previous run (kept in
  pytest's cache, ``.pytest_cache``), scaled by how fast this run goes so far (`estimate_left`);
  the first run, without a cache, extrapolates from the tests done.
  Shown at pytest's default verbosity (file names with dots), which is what ``make test`` uses.
* PostgreSQL: when ``scripts/test-with-postgres.sh`` started a throwaway server for this run
  (``SATTN_PG_STOP_AT_END=1``), it is stopped in the terminal summary and one line says so,
  before pytest's last line ("N passed ... in Xs"), which stays the last line of the output.
  A server that was already running before is left alone, and a line says that too.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest

CACHE_KEY = "sampleattn/durations"
ROOT = Path(__file__).resolve().parents[1]


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``12 min``, ``1 h 4 min``: coarser as it grows."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 10:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def estimate_left(remaining: list[str], done: dict[str, float], cached: dict[str, float]) -> float | None:
    """Seconds left for the ``remaining`` node ids, or ``None`` when nothing is known yet.

    ``done``: this run's durations so far; ``cached``: the previous run's. A test timed before
    counts its previous duration, scaled by this run's pace on the tests done that were timed
    before too (a loaded machine runs slower; kept within 0.25x-4x). A test never timed counts
    the mean duration of this run's tests so far (the previous run's median before any is done).
    """
    if not remaining:
        return 0.0
    both = [n for n in done if n in cached]
    before = sum(cached[n] for n in both)
    pace = min(4.0, max(0.25, sum(done[n] for n in both) / before)) if before > 1.0 else 1.0
    if done:
        unknown_rate: float | None = sum(done.values()) / len(done)
    else:
        unknown_rate = statistics.median(cached.values()) if cached else None
    unknown = [n for n in remaining if n not in cached]
    if unknown and unknown_rate is None:
        return None
    return sum(cached[n] * pace for n in remaining if n in cached) + len(unknown) * (unknown_rate or 0.0)


class SessionProgress:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.cache = getattr(config, "cache", None)
        self.cached: dict[str, float] = dict(self.cache.get(CACHE_KEY, {})) if self.cache is not None else {}
        self.durations: dict[str, float] = {}
        self.items: list[str] = []
        self.started = time.monotonic()
        self.current_file: str | None = None
        # Taken out of the environment, so that a pytest run by a test never stops the server.
        self.stop_postgres = os.environ.pop("SATTN_PG_STOP_AT_END", None) == "1"

    # -- time left -----------------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = [item.nodeid for item in session.items]
        self.started = time.monotonic()

    @pytest.hookimpl(trylast=True)  # after the terminal reporter has written the file's name
    def pytest_runtest_logstart(self, nodeid: str, location: tuple) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        file = nodeid.split("::", 1)[0]
        if reporter is None or file == self.current_file:
            return
        self.current_file = file
        if reporter.showlongtestinfo or not reporter.showfspath:
            return
        remaining = [n for n in self.items if n not in self.durations]
        elapsed = time.monotonic() - self.started
        left = estimate_left(remaining, self.durations, self.cached)
        text = f"[{format_seconds(elapsed)} so far" + (f", ~{format_seconds(left)} left] " if left is not None
                                                          else "] ")
        reporter.write(text, cyan=True)
        reporter.flush()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.cache is not None and self.durations:
            self.cache.set(CACHE_KEY, {**self.cached, **{k: round(v, 3) for k, v in self.durations.items()}})

    # -- the throwaway PostgreSQL --------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter) -> None:
        line = postgres_line(stop=self.stop_postgres)
        if line:
            terminalreporter.write_line(line)


def postgres_line(*, stop: bool) -> str | None:
    """With ``stop``, stop the server `scripts/test-with-postgres.sh` started for this run; the
    line to print about the server, or ``None`` when the run had none."""
    url = os.environ.get("SAMPLEATTN_TEST_PG_URL")
    if not url:
        return None
    port = os.environ.get("SATTN_TEST_PG_PORT", "55432")
    if not stop:
        if os.environ.get("SATTN_TEST_PG_STARTED") == "0":
            return f"PostgreSQL on 127.0.0.1:{port} was running before the tests: left running"
        return None
    data = os.environ.get("SATTN_TEST_PG_DIR", f"/tmp/sattn-pg-{port}")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "start-postgres.sh"), "--stop", port],
                          capture_output=True, text=True, env={**os.environ, "SATTN_PG_DIR": data})
    if done.returncode != 0 or Path(data, "PG_VERSION").exists():
        return f"PostgreSQL on 127.0.0.1:{port}: could not stop it: {done.stderr.strip()[-300:]}"
    return f"PostgreSQL: stopped the server started for these tests (127.0.0.1:{port}; removed {data})"
