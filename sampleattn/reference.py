"""Plain-PyTorch oracles, with the signatures of the kernel path, for small inputs.

* `attention_ref`: exact dense attention (fp32 accumulation by default), bottom-right causal,
  GQA, an optional boolean mask; a row with no visible key gives 0 (and lse -inf), while a NaN
  or Inf among a row's scores gives that row what the math gives (NaN), never 0.
* `plan_ref`: stages 1-2 computed from dense softmax rows of the sampled rows (and, for the
  rescoring selection, of the ranking rows: `rescore_ref`).
* `sparse_attention_ref`: dense attention under ``plan.to_dense()``.
* `sample_attention_ref`: both.

They materialise (B, Hq, Sq, Sk) tensors: use them for tests, calibration subsets and checks,
never for long sequences. Tests, the benchmark and the tuner all use these same oracles.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .config import HeadOverride, SampleAttentionConfig
from .planning import PlanSetup, RowStatistics, SparsePlan, prepare_plan
from .rescoring import ranking_rows
from .validation import check_qkv

__all__ = [
    "attention_ref", "attention_rows_ref", "causal_mask", "masked_softmax", "plan_mask_rows", "plan_ref",
    "relative_error", "rescore_ref", "row_statistics_ref", "sample_attention_ref", "sparse_attention_ref",
]


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` in fp64 (method.md section 7); inf when ``x`` holds a NaN, so
    that no tolerance check can pass on one."""
    if torch.isnan(x).any():
        return float("inf")
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp(min=1e-30))


def causal_mask(seqlen_q: int, seqlen_k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(Sq, Sk) bool, bottom-right aligned: row i sees key j iff ``j <= seqlen_k - seqlen_q + i``."""
    i = torch.arange(seqlen_q, device=device).view(-1, 1)
    j = torch.arange(seqlen_k, device=device).view(1, -1)
    return j <= i + (seqlen_k - seqlen_q)


def masked_softmax(s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax of ``s`` over its last dim, over the entries where ``keep`` (broadcastable) is True.

    A row that keeps nothing gives zeros (the convention for a row with no visible key), not the
    NaN of a softmax over -inf alone. NaN or Inf among a row's kept scores are not hidden: the
    row's kept entries are NaN, as the math gives them (its dropped entries stay 0).
    """
    s = s.masked_fill(~keep, float("-inf"))
    any_kept = keep.any(dim=-1, keepdim=True)
    p = torch.softmax(s.masked_fill(~any_kept, 0.0), dim=-1)
    return torch.where(keep, p, torch.zeros((), dtype=p.dtype, device=p.device))


def _expand_kv(t: torch.Tensor, nheads_q: int) -> torch.Tensor:
    """(B, Sk, Hkv, D) -> (B, Hq, Sk, D): query head h reads KV head h // (Hq / Hkv)."""
    return t.transpose(1, 2).repeat_interleave(nheads_q // t.shape[2], dim=1)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    return_lse: bool = False,
    upcast: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention.

    Args:
        q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D).
        mask: optional bool, broadcastable to (B, Hq, Sq, Sk): True where a pair is kept
            (combined with the causal mask).
        upcast: compute in fp32 (fp64 stays fp64); False computes in the input dtype, the
            "same computation in PyTorch at the same dtype" baseline of the tests.
    Returns:
        out (B, Sq, Hq, D) in q's dtype; with ``return_lse`` also lse (B, Hq, Sq) fp32.
    """
    nheads_q = q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dtype = torch.float64 if q.dtype == torch.float64 else (torch.float32 if upcast else q.dtype)
    qh = q.transpose(1, 2).to(dtype)
    kh = _expand_kv(k, nheads_q).to(dtype)
    vh = _expand_kv(v, nheads_q).to(dtype)
    s = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        keep = causal_mask(q.shape[1], k.shape[1], q.device)
    keep = keep.expand_as(s)
    if mask is not None:
        keep = keep & mask.to(q.device)
    lse = torch.logsumexp(s.masked_fill(~keep, float("-inf")).float(), dim=-1)
    p = masked_softmax(s, keep)
    out = torch.matmul(p, vh).transpose(1, 2).to(q.dtype)
    return (out, lse) if return_lse else out


def row_statistics_ref(setup: PlanSetup, q: torch.Tensor, k: torch.Tensor) -> RowStatistics:
    """Stage 1 in plain PyTorch (`sampleattn.planning.row_statistics`'s oracle): the sampled rows'
    dense softmax, their window mass, and the column scores per selection head and segment."""
    rows, window = setup.rows, setup.window_dev
    slot_rows = rows.rows.to(torch.int64)
    real = slot_rows >= 0
    # Dense softmax of the sampled rows: (B, Hq, n_slots, Sk).
    qs = q[:, slot_rows.clamp(min=0)].transpose(1, 2).float()
    s = torch.matmul(qs, _expand_kv(k, setup.nheads_q).float().transpose(-1, -2)) * setup.scale
    pos = (setup.seqlen_k - setup.seqlen_q + slot_rows).view(1, 1, -1, 1)
    j = torch.arange(setup.seqlen_k, device=q.device).view(1, 1, 1, -1)
    visible = (j <= pos) & real.view(1, 1, -1, 1)
    # A row whose log-sum-exp is not finite (a NaN or Inf in its query or its visible keys) is
    # left out of the estimate, as the kernels leave it out: it adds nothing to the scores.
    lse = torch.logsumexp(s.masked_fill(~visible, float("-inf")), dim=-1)
    finite = torch.isfinite(lse)
    lse2 = torch.where(real.view(1, 1, -1) & finite, lse / math.log(2.0), float("inf"))
    p = torch.where(finite.unsqueeze(-1), masked_softmax(s, visible), 0.0)
    outside = (j <= pos - window.to(torch.int64).view(1, -1, 1, 1)) & visible
    wmass = torch.where(visible & ~outside, p, 0.0).sum(-1)
    wmass = torch.where(visible.any(-1), wmass, torch.ones_like(wmass))
    p_out = torch.where(outside, p, 0.0)  # (B, Hq, n_slots, Sk)
    slot_seg = rows.block_seg.to(q.device, torch.int64).repeat_interleave(rows.block)
    n_seg = rows.seg_blocks.numel() - 1
    onehot = (slot_seg.view(-1, 1) == torch.arange(n_seg, device=q.device).view(1, -1)).to(torch.float32)
    scores = torch.einsum("bhsk,sg->bhgk", p_out, onehot)
    scores = scores.view(setup.batch, -1, setup.q_per_sel, n_seg, setup.seqlen_k).sum(dim=2)

    def stripe_mass_of(col_idx: torch.Tensor, col_count: torch.Tensor) -> torch.Tensor:
        member = torch.zeros(*col_idx.shape[:3], setup.seqlen_k + 1, dtype=torch.bool, device=q.device)
        member.scatter_(3, col_idx.to(torch.int64), True)
        member = member[..., : setup.seqlen_k].repeat_interleave(setup.q_per_sel, dim=1)[:, :, slot_seg, :]
        return torch.where(member, p_out, 0.0).sum(-1)

    return RowStatistics(scores=scores, wmass=wmass, stripe_mass_of=stripe_mass_of, lse2=lse2, finite=finite)


def plan_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    config: SampleAttentionConfig,
    *,
    causal: bool = True,
    scale: float | None = None,
    heads: Mapping[int, HeadOverride] | None = None,
    keep_scores: bool = False,
    reports: bool = True,
) -> SparsePlan:
    """Stages 1-2 in plain PyTorch: same sampled rows and rule as `sampleattn.planning.plan`."""
    setup = prepare_plan(q, k, config, causal=causal, scale=scale, heads=heads)
    return config.selection.plan_reference(setup, q, k, config, keep_scores=keep_scores, reports=reports)


def rescore_ref(
    q: torch.Tensor, k: torch.Tensor, cand_idx: torch.Tensor, cand_count: torch.Tensor,
    window: torch.Tensor, *, q_per_sel: int, scale: float, block_m: int, m_stride: int,
) -> torch.Tensor:
    """Dense oracle of `sampleattn.kernels.rescore_candidates` (same signature and output).

    Each ranking row's softmax over its window band and the candidates left of it; per
    candidate, the sum of that probability over the ranking rows that see it left of their
    window (and over the selection group's query heads). Returns (B, Hsel, kmax) fp32.
    """
    batch, seqlen_q, nheads_q, _ = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    n_sel, kmax = cand_idx.shape[1], cand_idx.shape[3]
    rows = ranking_rows(seqlen_q, block_m, m_stride).to(q.device)
    pos = (seqlen_k - seqlen_q + rows).view(1, 1, -1, 1)
    j = torch.arange(seqlen_k, device=q.device).view(1, 1, 1, -1)
    w = window.to(q.device, torch.int64).view(1, -1, 1, 1)
    left = j <= pos - w  # (1, Hq, n, Sk)
    band = (j <= pos) & ~left
    member = torch.zeros(batch, n_sel, seqlen_k + 1, dtype=torch.bool, device=q.device)
    member.scatter_(2, cand_idx[:, :, 0].to(torch.int64), True)
    member = member[..., :seqlen_k].repeat_interleave(q_per_sel, dim=1).unsqueeze(2)  # (B, Hq, 1, Sk)
    mass = torch.zeros(batch, nheads_q, seqlen_k, device=q.device, dtype=torch.float32)
    group = nheads_q // nheads_kv
    for kv in range(nheads_kv):  # one KV head at a time: memory O(rows * Sk) per head
        heads = slice(kv * group, (kv + 1) * group)
        s = torch.matmul(q[:, rows][:, :, heads].transpose(1, 2).float(),
                         k[:, :, kv].float().transpose(-1, -2).unsqueeze(1)) * scale
        keep = band[:, heads] | (left[:, heads] & member[:, heads])
        # Ranking rows with a non-finite log-sum-exp rank nothing (as in the kernel).
        finite = torch.isfinite(torch.logsumexp(s.masked_fill(~keep, float("-inf")), dim=-1))
        p = torch.where(finite.unsqueeze(-1), masked_softmax(s, keep), 0.0)
        mass[:, heads] = torch.where(left[:, heads] & member[:, heads], p, 0.0).sum(dim=2)
    mass = mass.view(batch, n_sel, q_per_sel, seqlen_k).sum(dim=2)
    padded = torch.cat([mass, torch.zeros(batch, n_sel, 1, device=q.device)], dim=2)
    out = torch.gather(padded, 2, cand_idx[:, :, 0].to(torch.int64))
    valid = torch.arange(kmax, device=q.device).view(1, 1, -1) < cand_count.view(batch, n_sel, 1)
    return torch.where(valid, out, 0.0)


def sparse_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: SparsePlan, *,
    return_lse: bool = False, upcast: bool = True, q_offset: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense attention under the plan's mask expanded to (B, Hq, Sq, Sk).

    ``q_offset`` (the oracle of `sampleattn.kernels.sparse_attention_fwd`'s): query row i sits at
    key position ``q_offset + i`` instead of ``Sk - Sq + i``; any integer, so Sq may exceed Sk.
    """
    if q_offset is None:
        check_qkv(q, k, v)
        return attention_ref(q, k, v, scale=plan.scale, mask=plan.to_dense(), return_lse=return_lse,
                             upcast=upcast)
    expected = (plan.batch, plan.seqlen_q, plan.nheads_q, plan.seqlen_k, plan.nheads_kv)
    got = (q.shape[0], q.shape[1], q.shape[2], k.shape[1], k.shape[2])
    if got != expected or v.shape != k.shape:
        raise ValueError(f"the plan is for (batch, seqlen_q, nheads_q, seqlen_k, nheads_kv)={expected}; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)}")
    # The plan's mask holds the causal bound j <= q_offset + i itself.
    mask = plan_mask_rows(plan, torch.arange(plan.seqlen_q, device=plan.col_idx.device), q_offset=q_offset)
    return attention_ref(q, k, v, causal=False, scale=plan.scale, mask=mask, return_lse=return_lse, upcast=upcast)


def sample_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: SampleAttentionConfig,
    *,
    causal: bool = True,
    scale: float | None = None,
    return_plan: bool = False,
    heads: Mapping[int, HeadOverride] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, SparsePlan]:
    """SampleAttention in plain PyTorch: `plan_ref` then `sparse_attention_ref`."""
    check_qkv(q, k, v, causal=causal)
    sparse_plan = plan_ref(q, k, config, causal=causal, scale=scale, heads=heads)
    out = sparse_attention_ref(q, k, v, sparse_plan)
    return (out, sparse_plan) if return_plan else out


def plan_mask_rows(plan: SparsePlan, rows: torch.Tensor, *, q_offset: int | None = None) -> torch.Tensor:
    """The plan's mask for some query rows only: (B, Hq, len(rows), Sk) bool.

    For checking long inputs on a subset of rows without the (B, Hq, Sq, Sk) mask.
    rows: (n,) int64 query-row indices. q_offset: the key position of query row 0 (None:
    ``Sk - Sq``, bottom-right alignment).
    """
    device = plan.col_idx.device
    rows = rows.to(device, torch.int64)
    offset = plan.seqlen_k - plan.seqlen_q if q_offset is None else q_offset
    pos = (offset + rows).view(1, 1, -1, 1)
    j = torch.arange(plan.seqlen_k, device=device).view(1, 1, 1, -1)
    w = plan.window.to(device, torch.int64).view(1, -1, 1, 1)
    in_window = (j <= pos) & (j > pos - w)
    member = torch.zeros(plan.batch, plan.nheads_sel, plan.n_segments, plan.seqlen_k + 1,
                         dtype=torch.bool, device=device)
    member.scatter_(3, plan.col_idx.to(torch.int64), True)
    member = member[..., : plan.seqlen_k].repeat_interleave(plan.q_per_sel, dim=1)
    stripes = member[:, :, rows // plan.segment_rows, :] & (j <= pos)
    mask = in_window | stripes
    if plan.blocks is not None:
        chosen = plan.blocks.member(plan.seqlen_k, rows // plan.blocks.block_rows)
        mask = mask | (chosen.repeat_interleave(plan.q_per_sel, dim=1) & (j <= pos))
    return mask


def attention_rows_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, *,
    scale: float | None = None, plan: SparsePlan | None = None,
) -> torch.Tensor:
    """Exact attention (fp32) of some query rows: (B, len(rows), Hq, D).

    With ``plan``, under the plan's mask (the sparse oracle); without, full causal attention.
    Memory O(len(rows) * Sk) per head, so it checks long inputs.
    """
    seqlen_q, seqlen_k, nheads_q = q.shape[1], k.shape[1], q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    rows = rows.to(q.device, torch.int64)
    qh = q[:, rows].transpose(1, 2).float()
    out = torch.empty(q.shape[0], nheads_q, len(rows), q.shape[-1], device=q.device)
    group = nheads_q // k.shape[2]
    pos = (seqlen_k - seqlen_q + rows).view(-1, 1)
    j = torch.arange(seqlen_k, device=q.device).view(1, -1)
    mask = plan_mask_rows(plan, rows) if plan is not None else None
    for kv in range(k.shape[2]):  # one KV head at a time keeps memory at O(rows * Sk)
        heads = slice(kv * group, (kv + 1) * group)
        s = torch.matmul(qh[:, heads], k[:, :, kv].float().transpose(-1, -2).unsqueeze(1)) * scale
        keep = (j <= pos).view(1, 1, len(rows), seqlen_k)
        if mask is not None:
            keep = keep & mask[:, heads]
        p = masked_softmax(s, keep)
        out[:, heads] = torch.matmul(p, v[:, :, kv].float().unsqueeze(1))
    return out.transpose(1, 2)
