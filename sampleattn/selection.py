"""Stage 2: score-based key-value filtering, and the exact pair counts of a plan.

Plain PyTorch on whatever device the scores live on (sort, cumsum, comparisons): O(seqlen)
memory per head, no Python loop over heads or rows. Shared by the kernel path
(`sampleattn.planning.plan`) and the reference (`sampleattn.reference.plan_ref`).

The width ``kmax`` of ``col_idx`` is the one value of a plan that needs the host: by default it is
the largest column count, read back with one device synchronisation. Under `static_kmax` (or
while the current CUDA stream is being captured into a graph) it is ``seqlen_k`` instead, a
bound known from the shapes, so the plan does no host synchronisation at all; the columns, the
counts and every result are the same, only the padding is wider. Either width is then padded to
a multiple of 16 (`COL_IDX_ALIGN`).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

__all__ = ["density_per_head", "select_columns", "static_kmax", "uses_static_kmax"]

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
    *, reach: torch.Tensor, static: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Take, per selection head and segment, the shortest prefix of columns by descending score
    such that ``(window_mass + sum of their scores) / n_rows >= alpha``.

    Args:
        scores: (B, Hsel, n_seg, Sk) fp32 column scores (mass outside each row's window).
        window_mass: (B, Hsel, n_seg) fp32 summed window mass of the counted rows.
        n_rows: (B, Hsel, n_seg) fp32 number of counted (row, query head) pairs.
        alpha: (Hsel,) fp32 CRA target per selection head.
        reach: (Hsel, n_seg) int64 the last column any row of the segment can see outside its
            window; with ``alpha >= 1`` every column up to it is taken (exact attention), even
            those whose score underflowed to zero.
        static: ``kmax = Sk`` (no host synchronisation) when True, the largest count when
            False; None decides by `uses_static_kmax`.
    Returns:
        col_idx: (B, Hsel, n_seg, kmax) int32, ascending, padded with Sk to a width that is a
            multiple of `COL_IDX_ALIGN` (at least the largest count; ``Sk`` rounded up when static);
        col_count: (B, Hsel, n_seg) int32. Columns with zero score are never taken (alpha < 1).
    """
    batch, n_sel, n_seg, seqlen_k = scores.shape
    alpha = alpha.to(scores.device, torch.float32).view(1, n_sel, 1)
    full = (alpha >= 1.0).view(1, n_sel, 1, 1)
    cols = torch.arange(seqlen_k, device=scores.device)
    within = cols.view(1, 1, 1, -1) <= reach.to(scores.device).view(1, n_sel, n_seg, 1)
    ranked = torch.where(full, within.to(scores.dtype), scores)
    ordered, order = torch.sort(ranked, dim=-1, descending=True, stable=True)
    prefix = torch.cumsum(ordered, dim=-1)
    need = (alpha * n_rows - window_mass).unsqueeze(-1)
    count = (prefix < need).sum(dim=-1) + 1
    count = torch.where(need.squeeze(-1) <= 0, torch.zeros_like(count), count)
    available = (ordered > 0).sum(dim=-1)
    count = torch.where(full.view(1, n_sel, 1), available, torch.minimum(count, available))
    if static is None:
        static = uses_static_kmax(scores.device)
    if static:
        kmax = seqlen_k
    else:
        kmax = max(int(count.max().item()), 1) if count.numel() else 1
    top = order[..., :kmax]
    keep = torch.arange(kmax, device=scores.device).view(1, 1, 1, -1) < count.unsqueeze(-1)
    top = torch.where(keep, top, torch.full_like(top, seqlen_k))
    col_idx = torch.sort(top, dim=-1).values.to(torch.int32)
    width = -(-kmax // COL_IDX_ALIGN) * COL_IDX_ALIGN
    col_idx = torch.nn.functional.pad(col_idx, (0, width - kmax), value=seqlen_k)
    return col_idx.contiguous(), count.to(torch.int32)


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


def density_per_head(
    col_idx: torch.Tensor, col_count: torch.Tensor, window: torch.Tensor, *,
    seqlen_q: int, seqlen_k: int, segment_rows: int, q_per_sel: int,
) -> torch.Tensor:
    """Computed pairs over visible pairs, per (batch, query head), in closed form (no mask).

    Args:
        col_idx: (B, Hsel, n_seg, kmax) int32; col_count: (B, Hsel, n_seg) int32.
        window: (Hq,) int window per query head.
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
    return (computed / visible).to(torch.float32)
