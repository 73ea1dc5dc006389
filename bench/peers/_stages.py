"""A peer's two stages, the estimate (its plan) then the sparse kernel over it, optionally
timed apart."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

__all__ = ["plan_then_attend"]


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plan_then_attend(device: torch.device, make_plan: Callable[[], Any], attend: Callable[[Any], torch.Tensor], *,
                     time_stages: bool) -> tuple[Any, torch.Tensor, dict]:
    """``(plan, out, times)``: ``plan = make_plan()``, ``out = attend(plan)``; with ``time_stages``
    the device is synchronised around each stage and ``times`` holds ``estimate_ms`` and
    ``attention_ms`` (wall clock, one call), else it is empty."""
    started = _now(device) if time_stages else 0.0
    plan = make_plan()
    planned = _now(device) if time_stages else 0.0
    out = attend(plan)
    if not time_stages:
        return plan, out, {}
    done = _now(device)
    return plan, out, {"estimate_ms": (planned - started) * 1e3, "attention_ms": (done - planned) * 1e3}
