"""Stage 2: score-based key-value filtering, and the exact pair counts of a plan.

Plain PyTorch on whatever device the scores live on (sort, cumsum, comparisons): O(seqlen)
memory per head, no Python loop over heads or rows. Shared by the kernel path
(`sampleattn.planning.plan`) and the reference (`sampleattn.reference.plan_ref`).

The width ``kmax`` of ``col_idx`` is the one value of a plan that needs the host: by default it is
the largest column count, read back with one device synchronisation. Under `static_kmax` (or
while the current CUDA stream is being captured into a graph) it is ``seqlen_k`` (or a smaller
limit on the count) instead, a bound known from the shapes, so the plan does no host
synchronisation at all; the columns, the counts and every result are the same, only the padding
is wider. Either width is then padded to a multiple of 16 (`COL_IDX_ALIGN`).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

__all__ = ["block_pairs", "density_per_head", "select_columns", "static_kmax", "uses_static_kmax",
           "without_covered_keys"]

#: ``col_idx``'s width is padded to a multiple of this: its strides then stay in one divisibility
#: class whatever the number of selected columns, so Triton (which specialises integer
#: arguments by divisibility by 16) compiles one stage-3 variant rather than one more for each
#: new class, and the kernels' loads of 16 column indices stay aligned.
COL_IDX_ALIGN = 16

_STATIC_KMAX: contextvars.ContextVar[bool] = contextvars.ContextVar("sampleattn_static_kmax", default=False)


@contextlib.contextmanager
def static_kmax(enabled: bool = True) -> Iterator[None]:
    """Within this block, plans pad ``col_idx`` to ``seqlen_k`` columns instead of reading the
    largest count back from the device: no host synchronisation, fixed shapes (what a CUDA graph
    needs). Memory: ``B * Hsel * n_seg * seqlen_k`` int32 for ``col_idx``."""
    token = _STATIC_KMAX.set(enabled)
    try:
        yield
    finally:
        _STATIC_KMAX.reset(token)


def uses_static_kmax(device: torch.device) -> bool:
    """Whether a plan made now on ``device`` takes the static width (see `static_kmax`)."""
    if _STATIC_KMAX.get():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def select_columns(
    scores: torch.Tensor, window_mass: torch.Tensor, n_rows: torch.Tensor, alpha: torch.Tensor,
    *, reach: torch.Tensor, static: bool | None = None, max_count: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Take, per selection head and segment, the shortest prefix of columns by descending score
    such that ``(window_mass + sum of their scores) / n_rows >= alpha``, at most ``max_count``
    of them (None: no limit).

    Args:
        scores: (B, Hsel, n_seg, Sk) fp32 column scores (mass outside each row's window).
        window_mass: (B, Hsel, n_seg) fp32 summed window mass of the counted rows.
        n_rows: (B, Hsel, n_seg) fp32 number of counted (row, query head) pairs.
        alpha: (Hsel,) fp32 CRA target per selection head.
        reach: (Hsel, n_seg) int64 the last column any row of the segment can see outside its
            window; with ``alpha >= 1`` every column up to it is taken (exact attention), even
            those whose score underflowed to zero.
        static: ``kmax = Sk`` (``min(Sk, max_count)``; no host synchronisation) when True, the
            largest count when False; None decides by `uses_static_kmax`.
        max_count: the most columns taken per selection head and segment (the highest-scoring
            ones, even where alpha is 1); None: no limit.
    Returns:
        col_idx: (B, Hsel, n_seg, kmax) int32, ascending, padded with Sk to a width that is a
            multiple of `COL_IDX_ALIGN` (at least the largest count; ``Sk``, or ``max_count`` when
            smaller, rounded up when static);
        col_count: (B, Hsel, n_seg) int32. Columns with zero score are never taken (alpha < 1).
    """
    batch, n_sel, n_seg, seqlen_k = scores.shape
    alpha = alpha.to(scores.device, torch.float32).view(1, n_sel, 1)
    full = (alpha >= 1.0).view(1, n_sel, 1, 1)
    cols = torch.arange(seqlen_k, device=scores.device)
    within = cols.view(1, 1, 1, -1) <= reach.to(scores.device).view(1, n_sel, n_seg, 1)
    # alpha 1 takes every column up to the reach; under a limit the scores rank them still
    ranked = scores if max_count is not None else torch.where(full, within.to(scores.dtype), scores)
    ordered, order = torch.sort(ranked, dim=-1, descending=True, stable=True)
    prefix = torch.cumsum(ordered, dim=-1)
    need = (alpha * n_rows - window_mass).unsqueeze(-1)
    count = (prefix < need).sum(dim=-1) + 1
    count = torch.where(need.squeeze(-1) <= 0, torch.zeros_like(count), count)
    available = (ordered > 0).sum(dim=-1)
    count = torch.where(full.view(1, n_sel, 1), available, torch.minimum(count, available))
    if max_count is not None:
        count = count.clamp(max=max_count)
    if static is None:
        static = uses_static_kmax(scores.device)
    if static:
        kmax = seqlen_k if max_count is None else min(seqlen_k, max_count)
    else:
        kmax = max(int(count.max().item()), 1) if count.numel() else 1
    top = order[..., :kmax]
    keep = torch.arange(kmax, device=scores.device).view(1, 1, 1, -1) < count.unsqueeze(-1)
    top = torch.where(keep, top, torch.full_like(top, seqlen_k))
    col_idx = torch.sort(top, dim=-1).values.to(torch.int32)
    width = -(-kmax // COL_IDX_ALIGN) * COL_IDX_ALIGN
    col_idx = torch.nn.functional.pad(col_idx, (0, width - kmax), value=seqlen_k)
    return col_idx.contiguous(), count.to(torch.int32)


def without_covered_keys(scores: torch.Tensor, key_pos: torch.Tensor, covered: int) -> torch.Tensor:
    """Column scores (..., L) with the keys at positions below ``covered`` (key_pos (L,) int64)
    set to 0: keys another part of the mask keeps (the block rule's sink blocks) are never
    taken as columns, and the window mass derived from the scores counts their mass as reached."""
    return torch.where(key_pos.to(scores.device) < covered, 0.0, scores) if covered > 0 else scores


def _window_pairs(window: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """sum over x in [first, last] of min(w, x), per window w: the window's computed pairs for
    rows whose visible-key counts run from ``first`` to ``last``. window: (H,) int64."""
    w = window.to(torch.float64)
    n = last - first + 1
    total_triangle = (first + last) * n / 2.0
    below = torch.clamp(w, min=first - 1, max=last)  # x in [first, below] contribute x
    tri = (first + below) * (below - first + 1) / 2.0
    rest = (last - below) * w
    return torch.where(w >= last, torch.full_like(w, total_triangle), tri + rest)


def _ramp_sum(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """sum over u in [1, x] of min(u, n) (0 for x <= 0), elementwise, in fp64."""
    x = x.clamp(min=0).to(torch.float64)
    n = n.to(torch.float64)
    return torch.where(x <= n, x * (x + 1) / 2, n * (n + 1) / 2 + (x - n) * n)


def block_pairs(
    blocks, col_idx: torch.Tensor, col_count: torch.Tensor, window: torch.Tensor, *,
    seqlen_q: int, seqlen_k: int, q_per_sel: int, max_elements: int = 1 << 22, window_spread: int | None = None,
) -> torch.Tensor:
    """Pairs the chosen key blocks add to the window and the stripes, per (batch, query head).

    Row i of query block b keeps key j of a chosen block when ``j <= p_i - w`` (keys inside its
    window are the window's) and j is no stripe column (those are the stripes'). For rows
    [r0, r1) of b that is ``clamp(r1 + offset - w - j, 0, r1 - r0)`` rows per key j: summed in
    closed form over each block's keys, and over the stripe columns inside it from prefix
    counts and prefix sums of the sorted columns. Memory: at most ``max_elements`` per step.

    Args:
        blocks: `sampleattn.planning.KeyBlocks`; col_idx (B, Hsel, 1, kmax) int32 ascending, padded
            with Sk; col_count (B, Hsel, 1); window (Hq,) int.
    Returns:
        (B, Hq) fp64 pair counts.
    """
    if not blocks.has_columns:
        return _block_pairs_without_columns(blocks, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                                            q_per_sel=q_per_sel, window_spread=window_spread)
    blk_idx, blk_count = blocks.blk_idx, blocks.blk_count
    batch, n_sel, n_qb, kbmax = blk_idx.shape
    device = blk_idx.device
    offset = seqlen_k - seqlen_q
    kb, rows_per = blocks.key_block, blocks.block_rows
    cols = col_idx[:, :, 0].to(torch.int64)  # (B, Hsel, kmax); padding Sk counts as no column
    valid_cols = torch.arange(cols.shape[-1], device=device).view(1, 1, -1) < col_count[:, :, :1]
    prefix = torch.nn.functional.pad(torch.cumsum(torch.where(valid_cols, cols, 0), dim=-1), (1, 0))
    qb = torch.arange(n_qb, device=device)
    r1 = torch.clamp((qb + 1) * rows_per, max=seqlen_q)
    n_rows = (r1 - qb * rows_per).view(1, 1, -1, 1)
    w_all = window.to(device, torch.int64).view(n_sel, q_per_sel)
    total = torch.zeros(batch, n_sel, q_per_sel, dtype=torch.float64, device=device)
    per_head = max(1, n_qb * kbmax)
    step = max(1, max_elements // (batch * per_head))
    for h0 in range(0, n_sel, step):
        sl = slice(h0, min(n_sel, h0 + step))
        c = blk_idx[:, sl].to(torch.int64)  # (B, h, n_qb, kbmax)
        used = torch.arange(kbmax, device=device).view(1, 1, 1, -1) < blk_count[:, sl].unsqueeze(-1)
        a = c * kb
        b = torch.clamp(a + kb, max=seqlen_k)
        flat_cols = cols[:, sl].contiguous()
        flat_prefix = prefix[:, sl]
        for g in range(q_per_sel):
            w = w_all[sl, g].view(1, -1, 1, 1)
            t = (r1 + offset).view(1, 1, -1, 1) - w  # a row counts key j for t - j rows, clamped
            keys = _ramp_sum(t - a, n_rows) - _ramp_sum(t - b, n_rows)
            e1 = torch.minimum(torch.maximum(t - n_rows + 1, a), b)  # [a, e1): every row
            e2 = torch.minimum(torch.maximum(t, e1), b)  # [e1, e2): t - j rows

            def count_below(x):
                shape = x.shape
                return torch.searchsorted(flat_cols, x.reshape(batch, x.shape[1], -1)).view(shape)

            ca, c1, c2 = count_below(a), count_below(e1), count_below(e2)
            s1 = torch.gather(flat_prefix, 2, c1.reshape(batch, c1.shape[1], -1)).view(c1.shape)
            s2 = torch.gather(flat_prefix, 2, c2.reshape(batch, c2.shape[1], -1)).view(c2.shape)
            overlap = n_rows * (c1 - ca) + t * (c2 - c1) - (s2 - s1)
            pairs = torch.where(used, keys - overlap.to(torch.float64), 0.0)
            total[:, sl, g] += pairs.sum(dim=(2, 3))
    return total.reshape(batch, n_sel * q_per_sel)


def _block_pairs_without_columns(blocks, window: torch.Tensor, *, seqlen_q: int, seqlen_k: int,
                                 q_per_sel: int, window_spread: int | None) -> torch.Tensor:
    """`block_pairs` of a plan without stripe columns, from each list's last few blocks only.

    The chosen blocks of a query block are ascending and start left of the window of its last
    row for the group's narrowest window (`sampleattn.rules.block.candidate_blocks`). Only
    those that meet ``[first_pos - w_max + 1, last_pos - w_min]`` can reach into a row's window
    or be the short last key block: at most ``(block_rows + w_max - w_min) // key_block + 2``,
    the last of each list. Every earlier one is whole and left of every row's window,
    ``key_block * rows`` pairs. So the work is O(B * Hq * n_qblocks) whatever the number of
    blocks chosen (at 1M tokens the lists hold thousands). Returns (B, Hq) fp64.
    """
    blk_idx, count = blocks.blk_idx, blocks.blk_count.to(torch.int64)
    batch, n_sel, n_qb, kbmax = blk_idx.shape
    device = blk_idx.device
    offset = seqlen_k - seqlen_q
    kb, rows_per = blocks.key_block, blocks.block_rows
    w = window.to(device, torch.int64).view(1, n_sel, 1, q_per_sel, 1)
    if window_spread is None:
        groups = w.view(n_sel, q_per_sel)
        window_spread = int((groups.max(dim=1).values - groups.min(dim=1).values).max())
    edge = min(kbmax, (rows_per + window_spread) // kb + 2)
    slot = count.unsqueeze(-1) - edge + torch.arange(edge, device=device)  # (B, Hsel, n_qb, edge)
    used = slot >= 0
    c = torch.gather(blk_idx, 3, slot.clamp(min=0)).to(torch.int64)
    a = c * kb
    b = torch.clamp(a + kb, max=seqlen_k)
    qb = torch.arange(n_qb, device=device)
    r1 = torch.clamp((qb + 1) * rows_per, max=seqlen_q)
    n_rows = (r1 - qb * rows_per).view(1, 1, -1, 1)
    inner = (count - edge).clamp(min=0).to(torch.float64) * (kb * n_rows.squeeze(-1))  # (B, Hsel, n_qb)
    t = (r1 + offset).view(1, 1, -1, 1, 1) - w  # a row counts key j for t - j rows, clamped
    n5 = n_rows.unsqueeze(3)
    keys = _ramp_sum(t - a.unsqueeze(3), n5) - _ramp_sum(t - b.unsqueeze(3), n5)
    edges = torch.where(used.unsqueeze(3), keys, 0.0).sum(dim=-1)  # (B, Hsel, n_qb, q_per_sel)
    total = (edges + inner.unsqueeze(-1)).sum(dim=2)
    return total.reshape(batch, n_sel * q_per_sel)


def density_per_head(
    col_idx: torch.Tensor, col_count: torch.Tensor, window: torch.Tensor, *,
    seqlen_q: int, seqlen_k: int, segment_rows: int, q_per_sel: int, blocks=None, window_spread: int | None = None,
) -> torch.Tensor:
    """Computed pairs over visible pairs, per (batch, query head), in closed form (no mask).

    Args:
        col_idx: (B, Hsel, n_seg, kmax) int32; col_count: (B, Hsel, n_seg) int32.
        window: (Hq,) int window per query head.
        blocks: the chosen key blocks (`sampleattn.planning.KeyBlocks`), or None.
        window_spread: see `block_pairs`.
    Returns:
        (B, Hq) fp32.
    """
    batch, n_sel, n_seg, kmax = col_idx.shape
    offset = seqlen_k - seqlen_q
    visible = seqlen_q * (offset + 1) + seqlen_q * (seqlen_q - 1) / 2.0
    w = window.to(col_idx.device, torch.int64)
    win = _window_pairs(w, offset + 1, seqlen_k)  # (Hq,)
    # Stripe pairs: column j of segment s is computed for rows i in [r0, r1) with p_i - w >= j.
    seg = torch.arange(n_seg, device=col_idx.device)
    r0 = (seg * segment_rows).view(1, 1, n_seg, 1, 1)
    r1 = torch.clamp((seg + 1) * segment_rows, max=seqlen_q).view(1, 1, n_seg, 1, 1)
    j = col_idx.to(torch.int64).view(batch, n_sel, n_seg, 1, kmax)
    w_grouped = w.view(1, n_sel, 1, q_per_sel, 1)
    first_row = torch.maximum(r0, j + w_grouped - offset)
    rows = torch.clamp(r1 - first_row, min=0)
    valid = torch.arange(kmax, device=col_idx.device).view(1, 1, 1, 1, -1) < col_count.view(
        batch, n_sel, n_seg, 1, 1)
    stripes = torch.where(valid, rows, torch.zeros_like(rows)).sum(dim=(2, 4)).to(torch.float64)
    computed = stripes.reshape(batch, n_sel * q_per_sel) + win.view(1, -1)
    if blocks is not None:
        computed = computed + block_pairs(blocks, col_idx, col_count, window, seqlen_q=seqlen_q,
                                          seqlen_k=seqlen_k, q_per_sel=q_per_sel, window_spread=window_spread)
    return (computed / visible).to(torch.float32)
