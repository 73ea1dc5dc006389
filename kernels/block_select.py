"""Launcher of the block rule's selection (`_block_select_jit.block_select_kernel`).

The oracle with the same signature is `sampleattn.rules.block.select_key_blocks_ref`.
"""

from __future__ import annotations

import torch

from .sparse_attention import check_grid_y
from .tiles import launch_for

__all__ = ["select_key_blocks"]


def select_key_blocks(
    scores: torch.Tensor, candidates: torch.Tensor, beta: float, *, sink_blocks: int, width: int,
    block_c: int | None = None, num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block, the key blocks whose estimated mass, with the window's, reaches ``beta``.

    The window's mass is the scores of the blocks from ``candidates`` on; the first
    ``min(sink_blocks, candidates)`` blocks are always chosen and their mass counted; then the
    other candidate blocks whose score is at least the threshold ``tau``: the largest score such
    that the candidates scoring at least ``tau`` reach ``beta * total - window - sinks`` (the
    fewest blocks by descending score, blocks tied at ``tau`` included). Zero scores are never
    chosen but as sinks. With ``beta >= 1``, or where a row's scores are not finite, every
    candidate is chosen.

    Args:
        scores: (B, Hsel, n_qblocks, n_kblocks) fp32, non-negative (`block_scores`).
        candidates: (Hsel, n_qblocks) integer, how many leading key blocks may be chosen.
        width: the output's last dimension, at least ``n_kblocks`` rounded up to a multiple of 16
            when every block may be chosen; entries past a row's count hold ``n_kblocks``.
        block_c, num_warps: scores per chunk and warps; None takes the tile table's.
    Returns:
        blk_idx: (B, Hsel, n_qblocks, width) int32, ascending, padded with ``n_kblocks``;
        blk_count: (B, Hsel, n_qblocks) int32.
    """
    from ._block_select_jit import block_select_kernel

    if scores.dtype != torch.float32:
        raise ValueError(f"scores must be float32 (the estimate's output), got {scores.dtype}")
    batch, n_sel, n_qb, n_kb = scores.shape
    if candidates.shape != (n_sel, n_qb):
        raise ValueError(f"candidates has shape {tuple(candidates.shape)}; expected {(n_sel, n_qb)}")
    if width < n_kb:
        raise ValueError(f"width={width} is below the {n_kb} key blocks a row may choose")
    check_grid_y(batch * n_sel, "batch * selection heads")
    scores = scores.contiguous()
    cand = candidates.to(device=scores.device, dtype=torch.int32).contiguous()
    blk_idx = torch.empty((batch, n_sel, n_qb, width), device=scores.device, dtype=torch.int32)
    blk_count = torch.empty((batch, n_sel, n_qb), device=scores.device, dtype=torch.int32)
    launch = launch_for("select_key_blocks", block_c=block_c, num_warps=num_warps)
    block_select_kernel[(n_qb, batch * n_sel)](
        scores, cand, blk_idx, blk_count,
        scores.stride(0), scores.stride(1), scores.stride(2),
        cand.stride(0),
        blk_idx.stride(0), blk_idx.stride(1), blk_idx.stride(2),
        blk_count.stride(0), blk_count.stride(1),
        n_sel, n_kb, width, float(beta), int(sink_blocks),
        BLOCK_C=launch.block_c, num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return blk_idx, blk_count
