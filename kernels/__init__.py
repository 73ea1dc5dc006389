"""Triton kernels of SampleAttention and their launchers.

This package knows nothing of the rest of `sampleattn`: launchers take tensors and plain
numbers. Stage 1 (`sampling`): sampled-row statistics and column scores; the rescoring
selection's passes (`rescoring`). Stage 3 (`sparse_attention`): FlashAttention over a window
band plus gathered key columns (and key blocks chosen per query block, whose estimate is
`block_scores` and selection `block_select`). Every launcher takes its tiles, warps and stages
from one table (`tiles`).

Attributes load lazily (``lazy_loader``): ``import sampleattn.kernels.tiles`` (the operator's
config reads its default tiles there) imports neither torch nor triton.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=["tiles"], submod_attrs={
    "block_scores": ["block_scores", "pooled_keys"],
    "block_select": ["select_key_blocks"],
    "rescoring": ["rescore_candidates"],
    "sampling": ["column_scores", "sampled_row_stats", "stripe_mass"],
    "sparse_attention": ["MAX_GRID_Y", "columns_left_of_window", "sparse_attention_fwd"],
})
