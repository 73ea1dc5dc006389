"""The paper's rule across ranks: stage 1 on the sampled rows, stage 2 by a merged top-k.

Traffic: the sampled query rows (a few percent of q) are gathered once; each rank computes the
sampled rows' partial log-sum-exp over its own keys, and the partials are merged (one small
all-gather of ``(B, Hq, n_slots)`` fp32); each rank then scores its own key columns, which never
leave it. Stage 2 needs the columns in descending score until the mass reaches alpha: each rank
offers its ``m`` best (score, column) pairs per selection head, every rank merges the offers in
the same order, and when the merged list cannot yet decide the count, ``m`` grows (rounds are
few: the offers only need to cover the selected columns).

Every rank ends with the same columns, in the format of `sampleattn.selection.select_columns`.
"""

from __future__ import annotations

import torch

from sampleattn.planning import PlanSetup, counted_pairs
from sampleattn.selection import COL_IDX_ALIGN

from .comm import Communicator
from .layout import SequenceLayout

__all__ = ["gather_sampled_queries", "select_columns_cp", "stripe_scores_cp"]

#: Pairs each rank offers per selection head in the first round of the merged top-k.
FIRST_OFFER = 256


def gather_sampled_queries(setup: PlanSetup, q: torch.Tensor, layout: SequenceLayout,
                           comm: Communicator) -> torch.Tensor:
    """(B, n_slots, Hq, D): the query of every sampled slot (zeros for padding slots), gathered
    from the ranks that hold the rows. q: (B, L, Hq, D) this rank's chunk."""
    rows = setup.rows.rows.to(q.device, torch.int64)
    real = rows >= 0
    owner = torch.where(real, layout.owner(rows.clamp(min=0)), -1)
    slots = [torch.nonzero(owner == r).flatten() for r in range(layout.world)]
    width = max(len(s) for s in slots)
    q_s = q.new_zeros((q.shape[0], rows.numel(), q.shape[2], q.shape[3]))
    if width == 0:
        return q_s
    mine = slots[comm.rank]
    offer = q.new_zeros((q.shape[0], width, q.shape[2], q.shape[3]))
    offer[:, :len(mine)] = q[:, layout.local_index(rows[mine])]
    gathered = comm.all_gather(offer, "sampled_q")
    for r, s in enumerate(slots):
        q_s[:, s] = gathered[r, :, :len(s)]
    return q_s


#: Elements of one step's (heads, slots, keys) logits in stage 1 (fp32: 512 MiB): the local keys
#: are scored in chunks so that memory stays bounded at any length.
STEP_ELEMENTS = 1 << 27


def _key_chunks(setup: PlanSetup, n_slots: int, local: int) -> list[slice]:
    group = setup.nheads_q // setup.nheads_kv
    step = max(16, STEP_ELEMENTS // max(1, group * n_slots))
    return [slice(j, min(local, j + step)) for j in range(0, local, step)]


def _slot_logits(setup: PlanSetup, q_s: torch.Tensor, k: torch.Tensor, kv: int, keys: slice) -> torch.Tensor:
    """(B, g, n_slots, n) fp32 scaled logits of KV head ``kv``'s query heads against local keys ``keys``."""
    group = setup.nheads_q // setup.nheads_kv
    heads = slice(kv * group, (kv + 1) * group)
    return torch.einsum("bshd,bld->bhsl", q_s[:, :, heads].float(), k[:, keys, kv].float()) * setup.scale


def stripe_scores_cp(setup: PlanSetup, q_s: torch.Tensor, k: torch.Tensor, key_pos: torch.Tensor,
                     comm: Communicator) -> tuple[torch.Tensor, torch.Tensor]:
    """Column scores of this rank's keys, from the sampled rows' merged softmax.

    Args:
        q_s: (B, n_slots, Hq, D) `gather_sampled_queries`; k: (B, L, Hkv, D) this rank's keys;
        key_pos: (L,) int64 their global positions.
    Returns:
        scores: (B, Hsel, n_seg, L) fp32, the mass the sampled rows put on each local key outside
            their windows (`sampleattn.planning.RowStatistics.scores`, this rank's columns);
        finite: (B, Hq, n_slots) bool, whether each slot's merged log-sum-exp is finite (padding
            slots and rows with a NaN or Inf are left out, as the single-process kernels do).
    """
    rows = setup.rows.rows.to(k.device, torch.int64)
    pos = (setup.seqlen_k - setup.seqlen_q + rows).view(1, 1, -1, 1)
    real = (rows >= 0).view(1, 1, -1, 1)
    group = setup.nheads_q // setup.nheads_kv
    chunks = _key_chunks(setup, rows.numel(), key_pos.numel())
    # pass 1: each slot's log-sum-exp over the local keys (chunk by chunk), then over the ranks
    partial = torch.full((q_s.shape[0], setup.nheads_q, rows.numel()), float("-inf"), device=k.device)
    for kv in range(setup.nheads_kv):
        heads = slice(kv * group, (kv + 1) * group)
        for keys in chunks:
            visible = (key_pos[keys].view(1, 1, 1, -1) <= pos) & real
            s = _slot_logits(setup, q_s, k, kv, keys).masked_fill(~visible, float("-inf"))
            partial[:, heads] = torch.logaddexp(partial[:, heads], torch.logsumexp(s, dim=-1))
    lse = torch.logsumexp(comm.all_gather(partial, "row_lse"), dim=0)  # the same on every rank
    finite = torch.isfinite(lse)
    # pass 2: each local key's share of the slots' mass outside their windows
    window = setup.window_dev.to(k.device, torch.int64)
    slot_seg = setup.rows.block_seg.to(k.device, torch.int64).repeat_interleave(setup.rows.block)
    n_seg = setup.rows.seg_blocks.numel() - 1
    onehot = (slot_seg.view(-1, 1) == torch.arange(n_seg, device=k.device).view(1, -1)).to(torch.float32)
    per_head = torch.empty(q_s.shape[0], setup.nheads_q, n_seg, key_pos.numel(), device=k.device)
    for kv in range(setup.nheads_kv):
        heads = slice(kv * group, (kv + 1) * group)
        for keys in chunks:
            j = key_pos[keys].view(1, 1, 1, -1)
            outside = (j <= pos) & real & (j <= pos - window[heads].view(1, -1, 1, 1))
            outside = outside & finite[:, heads].unsqueeze(-1)
            p = torch.where(outside, torch.exp(_slot_logits(setup, q_s, k, kv, keys) - lse[:, heads].unsqueeze(-1)), 0.0)
            per_head[:, heads, :, keys] = torch.einsum("bhsl,sg->bhgl", p, onehot)
    scores = per_head.view(q_s.shape[0], -1, setup.q_per_sel, n_seg, key_pos.numel()).sum(dim=2)
    return scores, finite


def select_columns_cp(setup: PlanSetup, scores: torch.Tensor, finite: torch.Tensor, key_pos: torch.Tensor,
                      comm: Communicator, *, max_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 of the paper's rule over every rank's columns (`sampleattn.selection.select_columns`
    on the concatenated scores, without concatenating them), at most ``max_count`` columns per
    head and segment (None: no limit).

    Args:
        scores: (B, Hsel, n_seg, L) fp32 this rank's column scores; key_pos (L,) int64 ascending.
        finite: (B, Hq, n_slots) bool (`stripe_scores_cp`).
        max_count: the most columns taken per selection head and segment (the highest-scoring
            ones, even where alpha is 1); None: no limit.
    Returns:
        col_idx (B, Hsel, n_seg, kmax) int32 ascending, padded with Sk to a multiple of 16, and
        col_count (B, Hsel, n_seg) int32: the same on every rank.
    """
    device = scores.device
    batch, n_sel, n_seg, local = scores.shape
    seqlen_k = setup.seqlen_k
    _, _, n_rows = counted_pairs(setup.rows, setup.window_dev.to(device), batch=batch, seqlen_q=setup.seqlen_q,
                                 seqlen_k=seqlen_k, q_per_sel=setup.q_per_sel, finite=finite)
    # The window mass is the counted pairs minus every column's score (window_mass_from_scores).
    outside = comm.all_gather(scores.sum(dim=-1, dtype=torch.float64), "score_sums").sum(dim=0)
    window_mass = (n_rows.to(torch.float64) - outside).clamp(min=0.0).to(torch.float32)
    alpha = setup.alpha_sel_dev.to(device, torch.float32).view(1, n_sel, 1)
    full = (alpha >= 1.0).view(1, n_sel, 1, 1)
    within = key_pos.view(1, 1, 1, -1) <= setup.reach_dev.to(device).view(1, n_sel, n_seg, 1)
    ranked = scores if max_count is not None else torch.where(full, within.to(scores.dtype), scores)
    need = alpha * n_rows - window_mass
    available = comm.all_gather((ranked > 0).sum(dim=-1), "score_counts").sum(dim=0)
    # ranked ties keep ascending columns (a stable sort of ascending positions), as select_columns
    ordered, order = torch.sort(ranked, dim=-1, descending=True, stable=True)
    ordered_pos = key_pos[order].to(torch.int32)
    offer = min(local, FIRST_OFFER)
    while True:
        vals = comm.all_gather(ordered[..., :offer], "topk_scores")  # (W, B, Hsel, n_seg, m)
        cols = comm.all_gather(ordered_pos[..., :offer], "topk_columns")
        merged_vals = vals.permute(1, 2, 3, 0, 4).reshape(batch, n_sel, n_seg, -1)
        merged_cols = cols.permute(1, 2, 3, 0, 4).reshape(batch, n_sel, n_seg, -1)
        by_col = torch.sort(merged_cols, dim=-1, stable=True).indices
        merged_vals, merged_cols = merged_vals.gather(-1, by_col), merged_cols.gather(-1, by_col)
        by_val = torch.sort(merged_vals, dim=-1, descending=True, stable=True).indices
        merged_vals, merged_cols = merged_vals.gather(-1, by_val), merged_cols.gather(-1, by_val)
        # An entry is final when it sorts before every truncated offer's last entry: no column
        # that a rank kept back can come before it.
        safe = torch.ones_like(merged_vals, dtype=torch.bool)
        if offer < local:
            for r in range(comm.world):
                last_val, last_col = vals[r, ..., -1:], cols[r, ..., -1:]
                safe &= (merged_vals > last_val) | ((merged_vals == last_val) & (merged_cols <= last_col))
        n_safe = safe.sum(dim=-1)
        prefix = torch.cumsum(merged_vals, dim=-1)
        below = ((prefix < need.unsqueeze(-1)) & safe).sum(dim=-1)
        count = torch.where(need <= 0, torch.zeros_like(below), below + 1)
        count = torch.where(full.view(1, n_sel, 1), available, torch.minimum(count, available))
        decided = (below < n_safe) | (n_safe >= available) | (need <= 0)
        if max_count is not None:
            count = count.clamp(max=max_count)
            decided = decided | (n_safe >= max_count)  # the first max_count entries are final
        if offer >= local or bool(decided.all()):
            break
        offer = min(local, offer * 4)
    kmax = max(int(count.max().item()), 1) if count.numel() else 1
    top = merged_cols[..., :kmax].to(torch.int64)
    if top.shape[-1] < kmax:
        top = torch.nn.functional.pad(top, (0, kmax - top.shape[-1]), value=seqlen_k)
    keep = torch.arange(kmax, device=device).view(1, 1, 1, -1) < count.unsqueeze(-1)
    top = torch.where(keep, top, torch.full_like(top, seqlen_k))
    col_idx = torch.sort(top, dim=-1).values.to(torch.int32)
    width = -(-kmax // COL_IDX_ALIGN) * COL_IDX_ALIGN
    col_idx = torch.nn.functional.pad(col_idx, (0, width - kmax), value=seqlen_k)
    return col_idx.contiguous(), count.to(torch.int32)
