"""The time-left estimate and its format (tests/session_progress.py)."""

from __future__ import annotations

from session_progress import estimate_left, format_seconds


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (4.2, 65, 600, 3 * 3600 + 120)] == ["4 s", "1 min 5 s", "10 min", "3 h 2 min"]


def test_estimate_from_the_previous_run_scaled_by_this_runs_pace() -> None:
    cached = {"a": 10.0, "b": 10.0, "c": 30.0}
    assert estimate_left(["a", "b", "c"], {}, cached) == 50.0
    # "a" took twice as long as last time: the machine is slower, so are "b" and "c"
    assert estimate_left(["b", "c"], {"a": 20.0}, cached) == 80.0
    assert estimate_left([], {"a": 1.0}, cached) == 0.0


def test_tests_never_timed_count_at_this_runs_mean() -> None:
    assert estimate_left(["x", "y"], {}, {}) is None  # nothing known yet
    assert estimate_left(["x", "y"], {"a": 3.0, "b": 5.0}, {}) == 8.0
    assert estimate_left(["x", "c"], {"a": 4.0}, {"c": 30.0}) == 34.0  # no pace without a shared test
