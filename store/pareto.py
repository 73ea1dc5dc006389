"""Non-dominated points on two objectives to minimise (error, latency).

A point *a* dominates *b* when it is no worse on both objectives and strictly better on one.
Points equal on both objectives do not dominate each other: all of them are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["dominates", "pareto_front"]

T = TypeVar("T")


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when ``a`` dominates ``b`` (both minimised)."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def pareto_front(items: Sequence[T], key: Callable[[T], tuple[float, float]]) -> list[T]:
    """The non-dominated items, sorted by the second objective (latency), then the first.

    O(n log n): sort by (error, latency), then sweep keeping the lowest latency seen among
    strictly smaller errors.
    """
    keyed = sorted(((key(item), i, item) for i, item in enumerate(items)), key=lambda t: (t[0], t[1]))
    front: list[tuple[tuple[float, float], int, T]] = []
    best_latency = float("inf")
    index = 0
    while index < len(keyed):
        error = keyed[index][0][0]
        group_end = index
        while group_end < len(keyed) and keyed[group_end][0][0] == error:
            group_end += 1
        group_min = keyed[index][0][1]  # the group is sorted by latency
        if group_min < best_latency:
            front.extend(t for t in keyed[index:group_end] if t[0][1] == group_min)
            best_latency = group_min
        index = group_end
    front.sort(key=lambda t: (t[0][1], t[0][0], t[1]))
    return [t[2] for t in front]
