"""One progress bar for the benchmark's cases (tqdm, on stderr), with the time left.

The benchmarks print their JSON rows and tables on stdout; the bar goes to stderr, so logs that
keep stdout stay as they were. ``enabled=False`` (each command's ``--no-progress``) or a missing
tqdm gives a bar that does nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["case_bar"]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def case_bar(total: int, desc: str, *, enabled: bool = True) -> Any:
    """A bar over ``total`` cases: ``update()`` after each, ``set_postfix_str(name)`` before it."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the benchmarks run without the tune extra too
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="case", dynamic_ncols=True)
