"""Launchers of stage 1 (sampled-row statistics, column scores) and of the stripe-mass pass.

The sampled rows arrive as ``rows`` (n_blocks * block_s,) int32, grouped in blocks of
``block_s`` rows that each lie in one segment, padded with -1. Oracle:
`sampleattn.reference.plan_ref`, which computes the same quantities from dense softmax rows.
"""

from __future__ import annotations

import math

import torch
import triton

from ._sampling_jit import column_scores_kernel, sampled_row_stats_kernel, stripe_mass_kernel

__all__ = ["column_scores", "sampled_row_stats", "stripe_mass"]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products ("ieee"); Triton's default for them is tf32, whose
    error (about 1e-3) would hide the kernel's own. fp16/bf16 use the tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _warps(block_s: int) -> int:
    # 64-row tiles run twice as fast with 4 warps as with 8 on the H200 (the stage-3 sweep).
    return 4 if block_s <= 64 else 8


def sampled_row_stats(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, window: torch.Tensor, *,
    scale: float, block_s: int, block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax statistics of the sampled rows.

    Args:
        q: (B, Sq, Hq, D); k: (B, Sk, Hkv, D).
        rows: (n_blocks * block_s,) int32 query-row indices, -1 for padding.
        window: (Hq,) int32 window width per query head.
    Returns:
        lse2: (B, Hq, n_slots) fp32 log2-domain log-sum-exp of ``scale * log2(e) * q.k`` over
            visible keys (+inf for padding slots); wmass: (B, Hq, n_slots) fp32, the share of
            each row's mass inside its window.
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    n_slots = rows.numel()
    lse2 = torch.empty((batch, nheads_q, n_slots), device=q.device, dtype=torch.float32)
    wmass = torch.empty_like(lse2)
    grid = (n_slots // block_s, batch * nheads_q)
    sampled_row_stats_kernel[grid](
        q, k, rows, window, lse2, wmass,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        lse2.stride(0), lse2.stride(1),
        nheads_q, seqlen_q, seqlen_k, scale * math.log2(math.e), nheads_q // nheads_kv,
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), DOT_PRECISION=dot_precision(q.dtype), BLOCK_S=block_s, BLOCK_N=block_n,
        num_warps=_warps(block_s),
    )
    return lse2, wmass


def column_scores(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, window: torch.Tensor,
    lse2: torch.Tensor, seg_blocks: torch.Tensor, *,
    q_per_sel: int, scale: float, block_s: int, block_n: int = 64, min_window: int | None = None,
) -> torch.Tensor:
    """Column scores ``c_j = sum_r P_rj [j <= p_r - w]`` per selection head and segment.

    Args:
        q, k, rows, window: as in `sampled_row_stats`; lse2 its output.
        seg_blocks: (n_seg + 1,) int32 row-block boundaries of the segments.
        q_per_sel: query heads summed into one selection head (1 or Hq // Hkv).
        min_window: ``window.min()`` when the caller knows it (saves a device synchronisation).
    Returns:
        scores: (B, Hsel, n_seg, Sk) fp32, Hsel = Hq // q_per_sel.
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    n_seg = seg_blocks.numel() - 1
    nheads_sel = nheads_q // q_per_sel
    n_tiles = triton.cdiv(seqlen_k, block_n)
    # The first row block whose last row sees tile t outside the narrowest window: earlier
    # blocks contribute nothing to that tile, so its program starts there.
    last_rows = rows.view(-1, block_s).max(dim=1).values.to(torch.int64)
    w_min = int(window.min().item()) if min_window is None else min_window
    reach = seqlen_k - seqlen_q + last_rows - w_min  # last column each block can score
    tile_start = torch.arange(n_tiles, device=q.device, dtype=torch.int64) * block_n
    # Row blocks are in ascending order of rows, so `reach` is non-decreasing.
    first_block = torch.searchsorted(reach.contiguous(), tile_start).to(torch.int32)
    scores = torch.empty((batch, nheads_sel, n_seg, seqlen_k), device=q.device, dtype=torch.float32)
    grid = (n_tiles, batch * nheads_sel, n_seg)
    column_scores_kernel[grid](
        q, k, rows, window, lse2, seg_blocks, first_block, scores,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        lse2.stride(0), lse2.stride(1),
        scores.stride(0), scores.stride(1), scores.stride(2),
        nheads_sel, seqlen_q, seqlen_k, scale * math.log2(math.e), nheads_q // nheads_kv, q_per_sel,
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), DOT_PRECISION=dot_precision(q.dtype), BLOCK_S=block_s, BLOCK_N=block_n,
        num_warps=_warps(block_s),
    )
    return scores


def stripe_mass(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, window: torch.Tensor,
    lse2: torch.Tensor, block_seg: torch.Tensor, col_idx: torch.Tensor, col_count: torch.Tensor, *,
    q_per_sel: int, scale: float, block_s: int, block_n: int = 64,
) -> torch.Tensor:
    """Per sampled row, the mass of the selected columns left of its window.

    Args:
        block_seg: (n_blocks,) int32 segment of each row block.
        col_idx: (B, Hsel, n_seg, kmax) int32; col_count: (B, Hsel, n_seg) int32.
    Returns:
        (B, Hq, n_slots) fp32.
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    col_idx = col_idx.contiguous()
    col_count = col_count.contiguous()
    out = torch.empty_like(lse2)
    grid = (rows.numel() // block_s, batch * nheads_q)
    stripe_mass_kernel[grid](
        q, k, rows, window, lse2, block_seg, col_idx, col_count, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        lse2.stride(0), lse2.stride(1),
        col_idx.stride(0), col_idx.stride(1), col_idx.stride(2),
        col_count.stride(0), col_count.stride(1),
        nheads_q, seqlen_q, seqlen_k, scale * math.log2(math.e), nheads_q // nheads_kv, q_per_sel,
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), DOT_PRECISION=dot_precision(q.dtype), BLOCK_S=block_s, BLOCK_N=block_n,
        num_warps=_warps(block_s),
    )
    return out
