"""The rescoring selection (``SampleAttentionConfig(selection="rescored")``), shared by the
kernel path and the reference.

The paper's rule scores the key columns with a few sampled query rows. The rows it does not
sample need columns the sampled rows do not see (docs/accuracy.md). Rescoring keeps stage 1 as
it is, takes a generous candidate set C with the paper's rule at ``candidate_alpha``, then lets
the *ranking rows* (every query block, or one in every ``rescore_stride``) rank C: each ranking
row's softmax over its window band and the candidates left of it, summed per candidate over
the rows that see it left of their window. The final set is the shortest prefix of C by that
score whose mass, with the windows', reaches alpha of the ranking rows' mass.
"""

from __future__ import annotations

import torch

from sampleattn.kernels.tiles import launch_for

from .selection import select_columns

__all__ = ["ranking_block", "ranking_rows", "ranked_pairs", "select_rescored"]


def ranking_block(block_m: int, head_dim: int) -> int:
    """Rows per ranking query block: the config's block_m, cut down to the rescoring kernels'
    largest row tile for ``head_dim`` (64 above head dim 128: `kernels.tiles`)."""
    return launch_for("rescore_candidates", head_dim=head_dim, block_m=block_m).block_m


def ranking_rows(seqlen_q: int, block: int, stride: int) -> torch.Tensor:
    """(n,) int64 query rows of the ranking blocks ``t = n_blocks - 1 (mod stride)``, ascending."""
    n_blocks = -(-seqlen_q // block)
    first = (n_blocks - 1) % stride
    blocks = torch.arange(first, n_blocks, stride, dtype=torch.int64)
    rows = (blocks.view(-1, 1) * block + torch.arange(block, dtype=torch.int64).view(1, -1)).flatten()
    return rows[rows < seqlen_q]


def ranked_pairs(
    window: torch.Tensor, rows: torch.Tensor, *, seqlen_q: int, seqlen_k: int, q_per_sel: int,
) -> torch.Tensor:
    """(Hsel,) fp32: the (ranking row, query head) pairs of each selection head whose row sees
    a key left of its window (``p_i >= w``): the mass the final selection measures against."""
    pos = (seqlen_k - seqlen_q + rows.to(torch.int64)).view(1, -1)
    counted = (pos >= window.to(torch.int64).view(-1, 1)).sum(dim=1).to(torch.float32)
    return counted.view(-1, q_per_sel).sum(dim=1)


def select_rescored(
    cand_idx: torch.Tensor, cand_scores: torch.Tensor, n_pairs: torch.Tensor, alpha: torch.Tensor,
    *, reach: torch.Tensor, seqlen_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The final set: the shortest prefix of the candidates by ranking score reaching alpha.

    Args:
        cand_idx: (B, Hsel, 1, kmax) int32 candidates, padded with Sk.
        cand_scores: (B, Hsel, kmax) fp32 their summed probability over the ranking rows.
        n_pairs: (Hsel,) fp32 counted (row, head) pairs (`ranked_pairs`), on the scores' device.
        alpha: (Hsel,) fp32; reach: (Hsel, 1) int64 (as for `select_columns`).
    Returns:
        col_idx (B, Hsel, 1, kmax') int32 ascending, padded with Sk; col_count (B, Hsel, 1) int32.
    """
    batch, n_sel, _, kmax = cand_idx.shape
    scores = torch.zeros(batch, n_sel, 1, seqlen_k + 1, device=cand_scores.device, dtype=torch.float32)
    scores.scatter_(3, cand_idx.to(torch.int64), cand_scores.view(batch, n_sel, 1, kmax))
    scores = scores[..., :seqlen_k]
    n = n_pairs.view(1, n_sel, 1).expand(batch, -1, -1)
    # Each counted row's probability over its window and the candidates sums to 1, so the
    # windows hold what the candidates do not.
    window_mass = n - cand_scores.sum(dim=-1, keepdim=True)
    return select_columns(scores, window_mass, n, alpha, reach=reach)
