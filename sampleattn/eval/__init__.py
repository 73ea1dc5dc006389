"""Accuracy evaluation of SampleAttention on a real model (``python -m sampleattn.eval``).

Fidelity against full attention (per-token KL, top-1 agreement, perplexity) on windows of the
needle-in-a-haystack essays, and needle-in-a-haystack retrieval, for SampleAttention at several
alphas, a tuned profile, fixed-pattern baselines at matched density (`sampleattn.baselines`) and
the per-row oracle. See `sampleattn.eval.runner` and ``docs/accuracy.md``.

Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalSettings", "run_eval", "write_outputs"]


def __getattr__(name: str) -> Any:
    if name in ("EvalSettings", "run_eval"):
        from . import runner

        return getattr(runner, name)
    if name == "write_outputs":
        from .report import write_outputs

        return write_outputs
    raise AttributeError(f"module 'sampleattn.eval' has no attribute {name!r}")
