"""Launcher of the block rule's estimate (`_block_scores_jit.block_scores_kernel`).

Checks only what would make the kernel read out of bounds; the oracle with the same signature
is `sampleattn.rules.block.block_scores_ref`.
"""

from __future__ import annotations

import math

import torch
import triton

from ._block_scores_jit import block_scores_kernel
from ._specialization import batch_stride
from .sampling import dot_precision
from .sparse_attention import check_grid_y
from .tiles import launch_for, padded_head_dim

__all__ = ["block_scores", "pooled_keys"]


def pooled_keys(k: torch.Tensor, key_block: int) -> torch.Tensor:
    """(B, Sk, Hkv, D) -> (B, n_kblocks, Hkv, D): the mean key of each block of ``key_block``
    keys (the last block's mean over the keys it has), accumulated in fp32, in k's dtype."""
    batch, seqlen_k, nheads_kv, head_dim = k.shape
    n_full = seqlen_k // key_block
    parts = []
    if n_full:
        parts.append(k[:, : n_full * key_block].view(batch, n_full, key_block, nheads_kv, head_dim)
                     .mean(dim=2, dtype=torch.float32))
    if seqlen_k % key_block:
        parts.append(k[:, n_full * key_block:].mean(dim=1, keepdim=True, dtype=torch.float32))
    return torch.cat(parts, dim=1).to(k.dtype) if len(parts) > 1 else parts[0].to(k.dtype)


def block_scores(
    q: torch.Tensor, k: torch.Tensor, *, key_block: int, block_rows: int, q_per_sel: int, scale: float,
    kbar: torch.Tensor | None = None, row_stride: int = 1, share_power: int = 1, block_c: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """Estimated mass of every key block for every query block.

    Args:
        q: (B, Sq, Hq, D); k: (B, Sk, Hkv, D).
        key_block: keys per block; block_rows: query rows per block.
        q_per_sel: query heads summed into one selection head (1, or Hq // Hkv).
        kbar: the pooled keys (`pooled_keys`), if already made.
        row_stride: score one row in every ``row_stride`` of each query block (the last of each
            group, or the last query row); ``block_rows // row_stride`` must be at least 16.
        share_power: sum each row's shares raised to this power (1: the shares themselves).
        block_c, num_warps, num_stages: key blocks per tile and the launch; None takes the tile
            table's for the ``block_rows // row_stride`` scored rows (`tiles.launch_for`).
    Returns:
        (B, Hsel, n_qblocks, n_kblocks) fp32: entry (b, s, t, c) is the sum over the scored rows
        of query block t and the query heads of selection head s of each row's softmax share of
        block c (the logit of a block is ``scale * q . kbar_c + ln(visible keys of c)``). A row's
        shares sum to 1, so a query block's entries sum to its scored (row, head) pairs (with
        ``share_power`` 1).
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    if kbar is None:
        kbar = pooled_keys(k, key_block)
    n_kb = kbar.shape[1]
    n_qb = triton.cdiv(seqlen_q, block_rows)
    n_sel = nheads_q // q_per_sel
    if row_stride < 1 or block_rows % row_stride or block_rows // row_stride < 16:
        raise ValueError(f"row_stride={row_stride} must divide block_rows={block_rows} and leave at least 16 rows")
    if share_power < 1:
        raise ValueError(f"share_power={share_power} must be a positive integer")
    check_grid_y(batch * n_sel, "batch * selection heads")
    scores = torch.empty((batch, n_sel, n_qb, n_kb), device=q.device, dtype=torch.float32)
    lse = torch.empty((batch, nheads_q, seqlen_q), device=q.device, dtype=torch.float32)
    block_d = padded_head_dim(head_dim)
    launch = launch_for("block_scores", head_dim=head_dim, dtype=q.dtype, rows=block_rows // row_stride,
                        block_c=block_c, num_warps=num_warps, num_stages=num_stages)
    block_scores_kernel[(n_qb, batch * n_sel)](
        q, kbar, lse, scores,
        batch_stride(q), q.stride(1), q.stride(2),
        batch_stride(kbar), kbar.stride(1), kbar.stride(2),
        batch_stride(lse), lse.stride(1),
        batch_stride(scores), scores.stride(1), scores.stride(2),
        nheads_q, seqlen_q, seqlen_k, n_kb, scale * math.log2(math.e), nheads_q // nheads_kv,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_rows, BLOCK_C=launch.block_c, KEY_BLOCK=key_block,
        GROUP=q_per_sel, DOT_PRECISION=dot_precision(q.dtype), ROW_STRIDE=row_stride, POWER=share_power,
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return scores
