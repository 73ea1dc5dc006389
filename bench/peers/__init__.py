"""Peers of the operator, reimplemented to be timed in the same process on the same tensors.

* `vertical_slash_attention`: MInference's vertical-slash pattern (last-64-query estimate of
  columns and diagonals, a Triton kernel over diagonal key ranges plus gathered columns).
* `flexprefill_attention`: FlexPrefill (per-head choice between query-aware block selection and
  vertical-slash blocks by a Jensen-Shannon test; a block-sparse Triton kernel).

Each takes q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) (flash-attn layout, bottom-right causal, GQA)
and returns ``(out, info)``, ``info["density"]`` being pairs computed / visible causal pairs.
Each also splits into a plan (the estimate, `*_plan`) and a kernel call over it (`*_sparse`), so
that the two stages can be timed apart, and has a plain-PyTorch mask oracle in `reference`.
These are the project's own code, written from the papers and the released repositories'
behaviour (microsoft/MInference, bytedance/FlexPrefill).
"""

from .flexprefill import BlockSparsePlan, flexprefill_attention, flexprefill_plan, flexprefill_sparse
from .vertical_slash import VerticalSlashPlan, vertical_slash_attention, vertical_slash_plan, vertical_slash_sparse

__all__ = ["BlockSparsePlan", "VerticalSlashPlan", "flexprefill_attention", "flexprefill_plan", "flexprefill_sparse",
           "vertical_slash_attention", "vertical_slash_plan", "vertical_slash_sparse"]
