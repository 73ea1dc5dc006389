"""Triton kernels of SampleAttention and their launchers.

This package knows nothing of the rest of `sampleattn`: launchers take tensors and plain
numbers. Stage 1 (`sampling`): sampled-row softmax statistics and column scores; the rescoring
selection's passes (`rescoring`). Stage 3
(`sparse_attention`): FlashAttention over a window band plus gathered key columns (and key
blocks chosen per query block, whose estimate is `block_scores` and selection
`block_select`).
"""

from __future__ import annotations

from .block_scores import block_scores, pooled_keys
from .block_select import select_key_blocks
from .rescoring import rescore_candidates
from .sampling import column_scores, sampled_row_stats, stripe_mass
from .sparse_attention import MAX_GRID_Y, columns_left_of_window, sparse_attention_fwd

__all__ = [
    "MAX_GRID_Y",
    "block_scores",
    "pooled_keys",
    "column_scores",
    "columns_left_of_window",
    "rescore_candidates",
    "select_key_blocks",
    "sampled_row_stats",
    "sparse_attention_fwd",
    "stripe_mass",
]
