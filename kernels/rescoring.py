"""Launcher of the rescoring selection's passes: each ranking row's log-sum-exp over its window
and the candidate columns (the stage-3 kernel, ``lse_only``), then each candidate column's
summed probability over the ranking rows (`candidate_mass_kernel`).

Oracle: `sampleattn.reference.rescore_ref` computes the same scores from dense softmax rows.
"""

from __future__ import annotations

import math

import torch
import triton

from ._rescoring_jit import candidate_mass_kernel
from ._specialization import batch_stride
from .sampling import dot_precision
from .sparse_attention import check_grid_y, sparse_attention_fwd
from .tiles import launch_for, padded_head_dim

__all__ = ["rescore_candidates"]


def rescore_candidates(
    q: torch.Tensor, k: torch.Tensor, cand_idx: torch.Tensor, cand_count: torch.Tensor,
    window: torch.Tensor, *, q_per_sel: int, scale: float, block_m: int, m_stride: int,
    block_c: int | None = None,
) -> torch.Tensor:
    """Score the candidate columns with every ranking row.

    Args:
        q: (B, Sq, Hq, D); k: (B, Sk, Hkv, D).
        cand_idx: (B, Hsel, 1, kmax) int32 candidate columns, ascending, padded with Sk.
        cand_count: (B, Hsel, 1) int32 valid entries.
        window: (Hq,) int32 window width per query head.
        block_m: rows per query block (at most 64 above head dim 128: `tiles.tile_rule`);
            m_stride: one block in every ``m_stride`` ranks (the last block always).
        block_c: candidates per program; None takes the tile table's.
    Returns:
        (B, Hsel, kmax) fp32: per candidate, the sum over ranking rows (and the group's query
        heads) of its probability, normalised over each row's window and candidates, where it
        lies left of the row's window; 0 for padding.
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    if cand_idx.dim() != 4 or cand_idx.shape[2] != 1:
        raise ValueError(f"cand_idx must be (B, Hsel, 1, kmax): one column set per head, got {tuple(cand_idx.shape)}")
    if cand_idx.dtype != torch.int32 or cand_count.dtype != torch.int32:
        raise ValueError(f"cand_idx and cand_count must be int32, got {cand_idx.dtype} and {cand_count.dtype}")
    check_grid_y(batch * cand_idx.shape[1], "batch * selection heads")
    launch = launch_for("rescore_candidates", head_dim=head_dim, dtype=q.dtype, block_m=block_m, block_c=block_c)
    if launch.block_m != block_m:  # 256-wide heads: the ranking blocks are stage 3's smaller row tiles
        raise ValueError(f"head_dim={head_dim} needs block_m <= {launch.block_m} for the rescoring selection, "
                         f"got {block_m}")
    segment_rows = triton.cdiv(seqlen_q, block_m) * block_m
    _, lse = sparse_attention_fwd(q, k, k, cand_idx, window, segment_rows=segment_rows, q_per_sel=q_per_sel,
                                  scale=scale, block_m=block_m, block_n=launch.block_n, lse_only=True,
                                  m_stride=m_stride)
    cand = cand_idx[:, :, 0].contiguous()
    count = cand_count[:, :, 0].contiguous()
    n_sel, kmax = cand.shape[1], cand.shape[2]
    score = torch.zeros((batch, n_sel, kmax), device=q.device, dtype=torch.float32)
    n_mblocks = triton.cdiv(seqlen_q, block_m)
    block_d = padded_head_dim(head_dim)
    grid = (triton.cdiv(kmax, launch.block_c), batch * n_sel)
    candidate_mass_kernel[grid](
        q, k, lse, cand, count, window, score,
        batch_stride(q), q.stride(1), q.stride(2),
        batch_stride(k), k.stride(1), k.stride(2),
        batch_stride(lse), lse.stride(1),
        batch_stride(cand), cand.stride(1),
        batch_stride(count),
        batch_stride(score), score.stride(1),
        n_sel, seqlen_q, seqlen_k, scale * math.log2(math.e),
        nheads_q // nheads_kv, q_per_sel, n_mblocks, m_stride, (n_mblocks - 1) % m_stride,
        HEAD_DIM=head_dim, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype),
        BLOCK_M=block_m, BLOCK_C=launch.block_c, num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return score
