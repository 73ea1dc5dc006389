"""Device timing shared by the benchmarks and the tuner: warm-up, then the median of repeats,
with CUDA events on a GPU (`cuda_ms`) and the wall clock on the CPU (`wall_ms`); `device_ms`
picks the clock for a device."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["cuda_ms", "device_ms", "wall_ms"]


def cuda_ms(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 7) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs.

    Each run is timed with a pair of CUDA events on the current stream and synchronised, so
    asynchronous launches are measured, not just queued.
    """
    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be at least 1")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def wall_ms(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 7) -> float:
    """`cuda_ms` for the CPU: median wall-clock milliseconds (``time.perf_counter``) of ``fn()``."""
    import time

    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be at least 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def device_ms(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 2, repeat: int = 7) -> float:
    """Median milliseconds of ``fn()`` running on ``device``: `cuda_ms` on a CUDA device,
    `wall_ms` elsewhere (the benchmarks' dry runs on the CPU)."""
    if torch.device(device).type == "cuda":
        return cuda_ms(fn, warmup=warmup, repeat=repeat)
    return wall_ms(fn, warmup=warmup, repeat=repeat)
