"""The heads that run dense: a plan that keeps most of a head's pairs is slower than dense attention.

Stage 3 computes a kept pair at about three quarters of the dense kernel's rate (it reads
gathered columns and chosen blocks, and its tiles are smaller), so a head whose plan keeps most
of its pairs costs more sparse than dense. `SampleAttentionConfig.dense_above` is that
break-even density: a KV head whose query heads' mean density (over the batch) is above it runs
through SDPA, and stage 3 runs the other heads on a plan in which the dense ones keep no key
(their programs find nothing to read and end at once). A decision per KV head keeps each SDPA
call a plain GQA call and each KV head's keys read by one of the two paths only.
"""

from __future__ import annotations

import dataclasses

import torch

from .sparse_plan import SparsePlan

__all__ = ["dense_kv_heads", "query_heads_of", "without_kv_heads"]


def dense_kv_heads(plan: SparsePlan, dense_above: float) -> list[int]:
    """The KV heads whose planned density, averaged over their query heads and the batch, is
    above ``dense_above`` (ascending). A host read of the plan's (B, Hq) density."""
    q_per_kv = plan.nheads_q // plan.nheads_kv
    per_kv = plan.density.float().reshape(plan.batch, plan.nheads_kv, q_per_kv).mean(dim=(0, 2))
    return torch.nonzero(per_kv > dense_above).flatten().tolist()


def query_heads_of(kv_heads: list[int], nheads_q: int, nheads_kv: int) -> list[int]:
    """The query heads that read the KV heads ``kv_heads`` (consecutive groups of Hq // Hkv)."""
    q_per_kv = nheads_q // nheads_kv
    return [h * q_per_kv + r for h in kv_heads for r in range(q_per_kv)]


def without_kv_heads(plan: SparsePlan, kv_heads: list[int]) -> SparsePlan:
    """The plan with the query heads of ``kv_heads`` keeping no key: window 0, no column and no
    key block. Stage 3 writes zeros for them (a row that keeps no key outputs 0); the caller
    fills them in. The other heads' index tensors are unchanged (the emptied ones are copies)."""
    if not kv_heads:
        return plan
    q_heads = query_heads_of(kv_heads, plan.nheads_q, plan.nheads_kv)
    # A selection head lies inside one KV head (q_per_sel is 1 or Hq // Hkv).
    sel_heads = sorted({h // plan.q_per_sel for h in q_heads})
    device = plan.window.device
    q_index = torch.tensor(q_heads, device=device)
    sel_index = torch.tensor(sel_heads, device=device)
    window = plan.window.clone()
    window[q_index] = 0
    col_idx, col_count = plan.col_idx.clone(), plan.col_count.clone()
    col_idx[:, sel_index] = plan.seqlen_k
    col_count[:, sel_index] = 0
    blocks = plan.blocks
    if blocks is not None:
        n_kblocks = -(-plan.seqlen_k // blocks.key_block)
        blk_idx, blk_count = blocks.blk_idx.clone(), blocks.blk_count.clone()
        blk_idx[:, sel_index] = n_kblocks
        blk_count[:, sel_index] = 0
        blocks = dataclasses.replace(blocks, blk_idx=blk_idx, blk_count=blk_count)
    return dataclasses.replace(plan, window=window, col_idx=col_idx, col_count=col_count, blocks=blocks)
