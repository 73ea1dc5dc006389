"""Prototype column-score estimators that see every query row (evaluation only).

* `PooledSampleAttention`: mean-pooled query blocks mixed with the sampled rows (measured: no gain).
* `RescoredSampleAttention`: candidates from the sampled rows, re-ranked by every row (measured:
  20-50% lower KL at equal density on SmolLM2 at 2K; see docs/accuracy.md).

The pooled estimator:

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

__all__ = ["PooledSampleAttention", "RescoredSampleAttention", "row_statistics"]


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


def _select(score: torch.Tensor, wmass: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shortest prefix of columns by score reaching alpha: (B, Hq, Sk) scores and (B, Hq) window
    mass, both per averaged row -> member (B, Hq, Sk) bool and count (B, Hq)."""
    need = alpha - wmass
    ordered, order = torch.sort(score, dim=-1, descending=True)
    prefix = torch.cumsum(ordered, dim=-1)
    count = (prefix < need.unsqueeze(-1)).sum(-1) + 1
    count = torch.where(need <= 0, torch.zeros_like(count), torch.minimum(count, (ordered > 0).sum(-1)))
    keep = torch.arange(score.shape[-1], device=score.device).view(1, 1, -1) < count.unsqueeze(-1)
    member = torch.zeros_like(keep)
    member.scatter_(-1, order, keep)
    return member, count


class RescoredSampleAttention(PooledSampleAttention):
    """Candidates from the sampled rows, re-scored by every query row.

    Stage A is the paper's rule at a looser ``candidate_alpha`` (default ``1 - (1 - alpha) / 4``):
    a generous candidate set C per head. Stage B gives every row (with keys outside its window)
    its softmax over ``window ∪ C`` and sums, per candidate column, the probability outside the
    rows' windows; the final set is the shortest prefix of C by that all-row score reaching
    ``alpha`` (of the mass within window ∪ C). On a GPU stage B is one extra sparse pass over the
    candidates (cost about that of stage 3); this prototype computes it densely (small inputs).
    """

    def __init__(self, *, alpha: float = 0.95, candidate_alpha: float | None = None, window_ratio: float = 0.08,
                 sample_ratio: float = 0.05, backend: Backend = "auto", sample_block: int = 16) -> None:
        super().__init__(alpha=alpha, window_ratio=window_ratio, sample_ratio=sample_ratio, mix=0.0,
                         backend=backend, sample_block=sample_block)
        self.candidate_alpha = candidate_alpha if candidate_alpha is not None else 1 - (1 - alpha) / 4

    def plan(self, q: torch.Tensor, k: torch.Tensor, scale: float):
        batch, seqlen_q, nheads_q, _ = q.shape
        seqlen_k, nheads_kv = k.shape[1], k.shape[2]
        group = nheads_q // nheads_kv
        offset = seqlen_k - seqlen_q
        window = max(1, math.ceil(round(self.window_ratio * seqlen_k, 9)))
        rows = choose_sampled_rows(seqlen_q, seqlen_k, n_rows=max(1, math.ceil(self.sample_ratio * seqlen_q)),
                                   min_window=window, block=self.sample_block, segment_rows=seqlen_q,
                                   device=q.device).valid_rows
        wm, sc, counted = row_statistics(q[:, rows], rows + offset, k, window, scale)
        n = max(int(counted.sum()), 1)
        candidates, _ = _select(sc / n, wm / n, self.candidate_alpha)  # (B, Hq, Sk)
        pos = torch.arange(seqlen_q, device=q.device).view(-1, 1) + offset
        j = torch.arange(seqlen_k, device=q.device).view(1, -1)
        visible = j <= pos
        in_window = visible & (j > pos - window)
        outside = visible & ~in_window
        row_counted = outside.any(-1)  # (Sq,)
        n_all = max(int(row_counted.sum()), 1)
        score = torch.zeros(batch, nheads_q, seqlen_k, device=q.device)
        wmass = torch.zeros(batch, nheads_q, device=q.device)
        for kv in range(nheads_kv):
            heads = slice(kv * group, (kv + 1) * group)
            s = torch.matmul(q[:, :, heads].transpose(1, 2).float(),
                             k[:, :, kv].float().transpose(-1, -2).unsqueeze(1)) * scale  # (B, g, Sq, Sk)
            keep = in_window | (candidates[:, heads].unsqueeze(2) & outside)
            p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
            p = p * row_counted.view(1, 1, -1, 1)
            score[:, heads] = torch.where(outside, p, 0.0).sum(2)
            wmass[:, heads] = torch.where(in_window, p, 0.0).sum((2, 3))
            del s, p, keep
        member, count = _select(score / n_all, wmass / n_all, self.alpha)
        member &= candidates
        count = member.sum(-1)
        kmax = max(1, int(count.max()))
        cols = torch.where(member, j.view(1, 1, -1).to(torch.int64), torch.full_like(member, seqlen_k,
                                                                                       dtype=torch.int64))
        cols = cols.sort(-1).values[..., :kmax]
        return build_plan(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads_q,
                          nheads_kv=nheads_kv, window=window, columns=cols.unsqueeze(2),
                          col_count=count.unsqueeze(-1), scale=scale, device=q.device)

    def __repr__(self) -> str:
        return (f"RescoredSampleAttention(alpha={self.alpha}, candidate_alpha={self.candidate_alpha}, "
                f"window_ratio={self.window_ratio}, sample_ratio={self.sample_ratio})")
