"""Accuracy evaluation of SampleAttention on a real model (``python -m sampleattn.eval``).

Fidelity against full attention (per-token KL, top-1 agreement, perplexity) on windows of the
needle-in-a-haystack essays, and needle-in-a-haystack retrieval, for SampleAttention at several
alphas, a tuned profile, fixed-pattern baselines at matched density (`sampleattn.baselines`) and
the per-row oracle. See `sampleattn.eval.runner` and ``docs/accuracy.md``.

Nothing heavy is imported until a function is called (attributes load lazily, ``lazy_loader``).
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "runner": ["EvalSettings", "run_eval"],
    "report": ["write_outputs"],
})
