"""Prototype column-score estimator that sees every query row: pooled query blocks.

The paper's stage 1 scores key columns with the exact softmax of a few sampled rows (about 5%
at a regular stride). On SmolLM2 those rows miss what the other rows need (method.md, section 2).
This prototype adds, at the cost of about ``1 / pool`` of a dense attention, the softmax of
**mean-pooled query blocks**: every block of ``pool`` consecutive query rows is averaged into one
query, which scores every key it can see; the column scores and window mass of the pooled rows
are mixed with those of the sampled rows (weight ``mix`` on the pooled part), and the paper's
rule then selects, per query head, the shortest prefix of columns by score that reaches alpha.

Plain PyTorch, O((Sq / pool + sampled rows) * Sk) memory per head; the plan it returns is a
regular `SparsePlan`, so stage 3 is the same kernel (or reference) as SampleAttention's. This is
an evaluation prototype: if it pays, it belongs in `sampleattn.planning` as an option.
"""

from __future__ import annotations

import math

import torch

from sampleattn.baselines import build_plan
from sampleattn.attention import Backend, sparse_attention
from sampleattn.sampling import choose_sampled_rows
from sampleattn.validation import check_qkv, default_scale

__all__ = ["PooledSampleAttention", "row_statistics"]


def row_statistics(qr: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, window: int, scale: float,
                   *, extra_window: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Window mass and outside-window column mass of some query rows.

    Args:
        qr: (B, n, Hq, D) query rows (real or pooled); pos: (n,) their absolute positions (a row
            sees keys ``j <= pos``).
        k: (B, Sk, Hkv, D); window: the window width; ``extra_window`` widens it (pooled rows
            stand for ``pool`` rows, so the window of any of them counts as window).
    Returns:
        wmass (B, Hq) summed window mass over counted rows, scores (B, Hq, Sk) summed
        outside-window probabilities, counted (n,) bool rows with keys outside the window.
    """
    batch, n, nheads_q, _ = qr.shape
    group = nheads_q // k.shape[2]
    j = torch.arange(k.shape[1], device=qr.device).view(1, -1)
    p_ = pos.view(-1, 1)
    visible = j <= p_
    outside = j <= p_ - (window + extra_window)
    counted = outside.any(-1)
    wmass = torch.zeros(batch, nheads_q, device=qr.device)
    scores = torch.zeros(batch, nheads_q, k.shape[1], device=qr.device)
    for kv in range(k.shape[2]):
        heads = slice(kv * group, (kv + 1) * group)
        s = torch.matmul(qr[:, :, heads].transpose(1, 2).float(), k[:, :, kv].float().transpose(-1, -2).unsqueeze(1))
        p = torch.softmax((s * scale).masked_fill(~visible, float("-inf")), dim=-1)
        p = p * counted.view(1, 1, -1, 1)
        scores[:, heads] = torch.where(outside, p, 0.0).sum(2)
        wmass[:, heads] = torch.where(visible & ~outside, p, 0.0).sum((2, 3))
    return wmass, scores, counted


class PooledSampleAttention:
    """SampleAttention with column scores from sampled rows plus mean-pooled query blocks.

    Called like `sampleattn.SampleAttention` (``op(q, k, v, *, layer, scale, return_plan)``).

    Args:
        alpha, window_ratio, sample_ratio: as in `SampleAttentionConfig`.
        pool: query rows per pooled block.
        mix: weight of the pooled rows' (per-row averaged) scores; 0 is the paper's rule,
            1 uses the pooled rows only.
    """

    def __init__(self, *, alpha: float = 0.95, window_ratio: float = 0.08, sample_ratio: float = 0.05,
                 pool: int = 64, mix: float = 0.5, backend: Backend = "auto", sample_block: int = 16) -> None:
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix={mix} must be in [0, 1]")
        self.alpha, self.window_ratio, self.sample_ratio = alpha, window_ratio, sample_ratio
        self.pool, self.mix, self.backend, self.sample_block = pool, mix, backend, sample_block

    def plan(self, q: torch.Tensor, k: torch.Tensor, scale: float):
        batch, seqlen_q, nheads_q, head_dim = q.shape
        seqlen_k = k.shape[1]
        offset = seqlen_k - seqlen_q
        window = max(1, math.ceil(round(self.window_ratio * seqlen_k, 9)))
        parts = []
        if self.mix < 1.0:
            rows = choose_sampled_rows(seqlen_q, seqlen_k, n_rows=max(1, math.ceil(self.sample_ratio * seqlen_q)),
                                       min_window=window, block=self.sample_block, segment_rows=seqlen_q,
                                       device=q.device).valid_rows
            parts.append((1.0 - self.mix, row_statistics(q[:, rows], rows + offset, k, window, scale)))
        if self.mix > 0.0:
            n_blocks = -(-seqlen_q // self.pool)
            pad = n_blocks * self.pool - seqlen_q
            qp = torch.nn.functional.pad(q.float(), (0, 0, 0, 0, 0, pad)) if pad else q.float()
            counts = torch.full((n_blocks,), float(self.pool), device=q.device)
            counts[-1] = self.pool - pad
            pooled = qp.view(batch, n_blocks, self.pool, nheads_q, head_dim).sum(2) / counts.view(1, -1, 1, 1)
            last = torch.clamp((torch.arange(n_blocks, device=q.device) + 1) * self.pool, max=seqlen_q) - 1
            parts.append((self.mix, row_statistics(pooled, last + offset, k, window, scale,
                                                   extra_window=self.pool - 1)))
        score = torch.zeros(batch, nheads_q, seqlen_k, device=q.device)
        wmass = torch.zeros(batch, nheads_q, device=q.device)
        for weight, (wm, sc, counted) in parts:
            n = max(int(counted.sum()), 1)
            score += weight * sc / n
            wmass += weight * wm / n
        need = self.alpha - wmass  # (B, Hq) mass the columns must add, per averaged row
        ordered, order = torch.sort(score, dim=-1, descending=True)
        prefix = torch.cumsum(ordered, dim=-1)
        count = (prefix < need.unsqueeze(-1)).sum(-1) + 1
        count = torch.where(need <= 0, torch.zeros_like(count), torch.minimum(count, (ordered > 0).sum(-1)))
        kmax = max(1, int(count.max()))
        top = order[..., :kmax]
        keep = torch.arange(kmax, device=q.device).view(1, 1, -1) < count.unsqueeze(-1)
        cols = torch.where(keep, top, torch.full_like(top, seqlen_k)).sort(-1).values
        return build_plan(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads_q,
                          nheads_kv=k.shape[2], window=window, columns=cols.unsqueeze(2),
                          col_count=count.unsqueeze(-1), scale=scale, device=q.device)

    def __call__(self, q, k, v, *, layer: int = 0, scale: float | None = None, return_plan: bool = False):
        """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) -> out (B, Sq, Hq, D) (and the plan)."""
        check_qkv(q, k, v)
        scale = default_scale(q, scale)
        plan = self.plan(q, k, scale)
        out = sparse_attention(q, k, v, plan, backend=self.backend)
        return (out, plan) if return_plan else out

    def __repr__(self) -> str:
        return (f"PooledSampleAttention(alpha={self.alpha}, window_ratio={self.window_ratio}, "
                f"sample_ratio={self.sample_ratio}, pool={self.pool}, mix={self.mix})")
