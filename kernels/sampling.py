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
from ._specialization import batch_stride
from .tiles import SCORES_BLOCK_N, launch_for, padded_head_dim

__all__ = ["SCORES_BLOCK_N", "column_scores", "sampled_row_stats", "score_tile_ranges", "stripe_mass"]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products ("ieee"); Triton's default for them is tf32, whose
    error (about 1e-3) would hide the kernel's own. fp16/bf16 use the tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def row_stats_heads(block_s: int, q_per_kv: int) -> int:
    """Query heads of one KV group per program of `sampled_row_stats` for ``block_s`` slots per
    row block: as many as fit in a 128-row tile, so each key tile is loaded once for all of them
    (the tile's key tile, warps and stages: `tiles.tile_rule`)."""
    # Tiles are powers of two: so is the head count (block_s is one already).
    return max(h for h in (1, 2, 4, 8) if q_per_kv % h == 0 and h * block_s <= max(128, block_s))


def sampled_row_stats(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, window: torch.Tensor, *,
    scale: float, block_s: int, block_n: int | None = None, window_mass: bool = True,
    heads_per_program: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact softmax statistics of the sampled rows.

    Args:
        q: (B, Sq, Hq, D); k: (B, Sk, Hkv, D).
        rows: (n_slots,) int32 query-row indices, -1 for padding; n_slots a multiple of block_s.
        window: (Hq,) int32 window width per query head.
        block_s: sampled rows (slots) per program.
        window_mass: also measure each row's mass inside its window (the plan's reports need
            it; the selection does not). False makes the pass a plain log-sum-exp.
        heads_per_program: query heads of one KV group per program (a divisor of Hq // Hkv):
            their rows form one ``heads_per_program * block_s``-row tile, so each key tile is
            loaded once for all of them.
        heads_per_program: None takes `row_stats_heads`.
        block_n, num_warps, num_stages: None takes the tile table's for the program's
            ``heads_per_program * block_s`` rows (`tiles.launch_for`).
    Returns:
        lse2: (B, Hq, n_slots) fp32 log2-domain log-sum-exp of ``scale * log2(e) * q.k`` over
            visible keys (+inf for padding slots); wmass: (B, Hq, n_slots) fp32, the share of
            each row's mass inside its window, or None without ``window_mass``.
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    n_slots = rows.numel()
    q_per_kv = nheads_q // nheads_kv
    if heads_per_program is None:
        heads_per_program = row_stats_heads(block_s, q_per_kv)
    launch = launch_for("sampled_row_stats", head_dim=head_dim, dtype=q.dtype, rows=heads_per_program * block_s,
                        block_n=block_n, num_warps=num_warps, num_stages=num_stages)
    if heads_per_program < 1 or q_per_kv % heads_per_program or heads_per_program & (heads_per_program - 1):
        raise ValueError(f"heads_per_program={heads_per_program} must be a power of two that divides the "
                         f"{q_per_kv} query heads per KV head")
    if n_slots % block_s:
        raise ValueError(f"{n_slots} sampled-row slots do not split into blocks of block_s={block_s}")
    lse2 = torch.empty((batch, nheads_q, n_slots), device=q.device, dtype=torch.float32)
    wmass = torch.empty_like(lse2) if window_mass else None
    n_row_blocks = n_slots // block_s
    grid = (batch * nheads_q // heads_per_program, n_row_blocks)
    sampled_row_stats_kernel[grid](
        q, k, rows, window, lse2, wmass if window_mass else lse2,
        batch_stride(q), q.stride(1), q.stride(2),
        batch_stride(k), k.stride(1), k.stride(2),
        batch_stride(lse2), lse2.stride(1),
        nheads_q, seqlen_q, seqlen_k, scale * math.log2(math.e), q_per_kv, n_row_blocks,
        HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), DOT_PRECISION=dot_precision(q.dtype), BLOCK_S=block_s,
        BLOCK_N=launch.block_n, GROUP=heads_per_program, TRACK_WINDOW=window_mass,
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return lse2, wmass


def score_tile_ranges(
    rows: torch.Tensor, window: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_s: int,
    block_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which row blocks each key tile of `column_scores` visits, and which of them need a mask.

    Depends only on the sampled rows, the windows and the shapes (so a plan caches it).

    Args:
        rows: (n_blocks * block_s,) int32 sampled rows, ascending, -1 for padding.
        window: (Hq,) int window per query head.
    Returns:
        first_block, free_block: (n_key_tiles,) int32. Row blocks before ``first_block[t]``
        cannot see tile t outside even the narrowest window (they add nothing: skipped); from
        ``free_block[t]`` on, every real row sees the whole tile outside even the widest
        window (no mask).
    """
    n_tiles = triton.cdiv(seqlen_k, block_n)
    blocks = rows.view(-1, block_s).to(torch.int64)
    real = blocks >= 0
    last_rows = torch.where(real, blocks, torch.full_like(blocks, -1)).max(dim=1).values
    # An all-padding block sorts after every real block: it never needs a mask (it adds 0).
    first_rows = torch.where(real, blocks, torch.full_like(blocks, seqlen_q + seqlen_k)).min(dim=1).values
    window = window.to(rows.device, torch.int64)
    w_min, w_max = window.min(), window.max()
    offset = seqlen_k - seqlen_q
    tile_start = torch.arange(n_tiles, device=rows.device, dtype=torch.int64) * block_n
    # Row blocks are in ascending order of rows, so both reaches are non-decreasing.
    reach = (offset + last_rows - w_min).contiguous()  # last column each block can score
    free_reach = (offset + first_rows - w_max).contiguous()  # last column all its rows score
    first_block = torch.searchsorted(reach, tile_start)
    free_block = torch.searchsorted(free_reach, tile_start + block_n - 1)
    return first_block.to(torch.int32), free_block.to(torch.int32)


def column_scores(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, window: torch.Tensor,
    lse2: torch.Tensor, seg_blocks: torch.Tensor, *,
    q_per_sel: int, scale: float, block_s: int, block_n: int = SCORES_BLOCK_N,
    tile_ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """Column scores ``c_j = sum_r P_rj [j <= p_r - w]`` per selection head and segment.

    Args:
        q, k, rows, window: as in `sampled_row_stats`; lse2 its output.
        seg_blocks: (n_seg + 1,) int32 row-block boundaries of the segments.
        q_per_sel: query heads summed into one selection head (1 or Hq // Hkv).
        tile_ranges: `score_tile_ranges` for these rows, windows and ``block_n``, when the caller
            has it (computed here otherwise).
    Returns:
        scores: (B, Hsel, n_seg, Sk) fp32, Hsel = Hq // q_per_sel.
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    n_seg = seg_blocks.numel() - 1
    nheads_sel = nheads_q // q_per_sel
    n_tiles = triton.cdiv(seqlen_k, block_n)
    if tile_ranges is None:
        tile_ranges = score_tile_ranges(rows, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_s=block_s,
                                        block_n=block_n)
    first_block, free_block = tile_ranges
    if first_block.numel() != n_tiles:
        raise ValueError(f"tile_ranges cover {first_block.numel()} key tiles, but Sk={seqlen_k} with "
                         f"block_n={block_n} has {n_tiles}: compute them with the same block_n")
    launch = launch_for("column_scores", head_dim=head_dim, dtype=q.dtype, rows=block_s, block_n=block_n,
                        num_warps=num_warps, num_stages=num_stages)
    scores = torch.empty((batch, nheads_sel, n_seg, seqlen_k), device=q.device, dtype=torch.float32)
    grid = (n_tiles, batch * nheads_sel, n_seg)
    column_scores_kernel[grid](
        q, k, rows, window, lse2, seg_blocks, first_block, free_block, scores,
        batch_stride(q), q.stride(1), q.stride(2),
        batch_stride(k), k.stride(1), k.stride(2),
        batch_stride(lse2), lse2.stride(1),
        batch_stride(scores), scores.stride(1), scores.stride(2),
        nheads_sel, seqlen_q, seqlen_k, scale * math.log2(math.e), nheads_q // nheads_kv, q_per_sel,
        HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), DOT_PRECISION=dot_precision(q.dtype), BLOCK_S=block_s,
        BLOCK_N=launch.block_n, num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return scores


def stripe_mass(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, window: torch.Tensor,
    lse2: torch.Tensor, block_seg: torch.Tensor, col_idx: torch.Tensor, col_count: torch.Tensor, *,
    q_per_sel: int, scale: float, block_s: int, block_n: int | None = None,
) -> torch.Tensor:
    """Per sampled row, the mass of the selected columns left of its window.

    Args:
        block_seg: (n_blocks,) int32 segment of each row block.
        col_idx: (B, Hsel, n_seg, kmax) int32; col_count: (B, Hsel, n_seg) int32.
        block_n: columns per tile; None takes the tile table's.
    Returns:
        (B, Hq, n_slots) fp32.
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    col_idx = col_idx.contiguous()
    col_count = col_count.contiguous()
    launch = launch_for("stripe_mass", head_dim=head_dim, dtype=q.dtype, rows=block_s, block_n=block_n)
    out = torch.empty_like(lse2)
    grid = (rows.numel() // block_s, batch * nheads_q)
    stripe_mass_kernel[grid](
        q, k, rows, window, lse2, block_seg, col_idx, col_count, out,
        batch_stride(q), q.stride(1), q.stride(2),
        batch_stride(k), k.stride(1), k.stride(2),
        batch_stride(lse2), lse2.stride(1),
        batch_stride(col_idx), col_idx.stride(1), col_idx.stride(2),
        batch_stride(col_count), col_count.stride(1),
        nheads_q, seqlen_q, seqlen_k, scale * math.log2(math.e), nheads_q // nheads_kv, q_per_sel,
        HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), DOT_PRECISION=dot_precision(q.dtype), BLOCK_S=block_s,
        BLOCK_N=launch.block_n, num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return out
