"""Stages 1 and 2: find, per head, the keys that hold the attention mass.

`plan` returns an immutable `SparsePlan` that the stage-3 kernel only consumes (plan, then
run). The plan holds a window width per query head; per selection head and segment of query
rows, a sorted list of column indices; and, for rules that choose them, per selection head and
query block a sorted list of key blocks (`KeyBlocks`). Which keys are chosen is the config's
selection rule's business (`sampleattn.rules`): this module holds what every rule shares (the
setup, the sampled rows' statistics, the plan's reports; the plan object itself is
`sampleattn.sparse_plan`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from .config import HeadOverride, SampleAttentionConfig, ceil_ratio
from .sampling import SampledRows, choose_sampled_rows
from .sparse_plan import KeyBlocks, SparsePlan
from .selection import density_per_head
from .validation import check_kernel_head_dim, check_qk, default_scale, kernel_backend_available

__all__ = [
    "KeyBlocks", "PlanSetup", "RowStatistics", "SparsePlan", "counted_pairs", "head_parameters", "make_plan",
    "plan", "prepare_plan", "row_statistics", "selection_inputs", "window_mass_from_scores",
]


def head_parameters(
    config: SampleAttentionConfig, nheads_q: int, seqlen_k: int,
    heads: Mapping[int, HeadOverride] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query-head alpha (Hq,) fp32 and window (Hq,) int32, with head overrides applied."""
    alphas = [config.alpha] * nheads_q
    ratios = [config.window_ratio] * nheads_q
    for head, override in (heads or {}).items():
        if not 0 <= head < nheads_q:
            raise ValueError(f"a head override names head {head}, but the layer has {nheads_q} query heads")
        if override.alpha is not None:
            alphas[head] = override.alpha
        if override.window_ratio is not None:
            ratios[head] = override.window_ratio
    windows = [ceil_ratio(r, seqlen_k) for r in ratios]
    return torch.tensor(alphas, dtype=torch.float32), torch.tensor(windows, dtype=torch.int32)


def segment_rows_for(config: SampleAttentionConfig, seqlen_q: int) -> int:
    """Rows per segment: the config's, or all rows (rounded up to a query block) for one set."""
    if config.segment_rows is not None:
        return config.segment_rows
    return -(-seqlen_q // config.block_m) * config.block_m


def selection_alpha(alpha: torch.Tensor, q_per_sel: int) -> torch.Tensor:
    """(Hsel,) alpha per selection head: with KV-head granularity the group's highest."""
    return alpha.view(-1, q_per_sel).max(dim=1).values


def reach_per_segment(
    window: torch.Tensor, rows: SampledRows, *, seqlen_q: int, seqlen_k: int, segment_rows: int,
    q_per_sel: int,
) -> torch.Tensor:
    """(Hsel, n_seg) int64: the last column a row of the segment sees outside its window."""
    n_seg = rows.seg_blocks.numel() - 1
    seg = torch.arange(n_seg, dtype=torch.int64)
    last_row = torch.clamp((seg + 1) * segment_rows, max=seqlen_q) - 1
    last_pos = seqlen_k - seqlen_q + last_row
    w_min = window.to(torch.int64).view(-1, q_per_sel).min(dim=1).values
    return last_pos.view(1, -1) - w_min.view(-1, 1)


def counted_pairs(
    rows: SampledRows, window: torch.Tensor, *, batch: int, seqlen_q: int, seqlen_k: int, q_per_sel: int,
    finite: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which (row, head) pairs of the sampled rows count.

    A pair counts when the row is real and sees keys outside the head's window (``p >= w``),
    and, with ``finite`` ((B, Hq, n_slots) bool), when its statistics are finite.

    Returns:
        counted: (B, Hq, n_slots) bool; onehot: (n_slots, n_seg) fp32 segment of each slot;
        n_counted: (B, Hsel, n_seg) fp32 counted pairs per selection head and segment.
    """
    device = window.device
    slot_rows = rows.rows.to(device, torch.int64)
    pos = seqlen_k - seqlen_q + slot_rows
    w = window.to(device, torch.int64).view(1, -1, 1)
    counted = ((slot_rows >= 0).view(1, 1, -1) & (pos.view(1, 1, -1) >= w)).expand(batch, -1, -1)
    if finite is not None:
        counted = counted & finite
    slot_seg = rows.block_seg.to(device, torch.int64).repeat_interleave(rows.block)
    n_seg = rows.seg_blocks.numel() - 1
    # (n_slots, n_seg); a comparison, not F.one_hot, whose range check synchronises the GPU
    onehot = (slot_seg.view(-1, 1) == torch.arange(n_seg, device=device).view(1, -1)).to(torch.float32)
    nheads_q = w.shape[1]
    n_counted = torch.einsum("bhs,sg->bhg", counted.to(torch.float32), onehot)
    n_counted = n_counted.view(batch, nheads_q // q_per_sel, q_per_sel, n_seg).sum(dim=2)
    return counted, onehot, n_counted


def window_mass_from_scores(scores: torch.Tensor, n_counted: torch.Tensor) -> torch.Tensor:
    """(B, Hsel, n_seg) summed window mass of the counted pairs, from the column scores alone.

    Each counted row's softmax sums to 1, and its mass outside its window is exactly what it
    adds to the scores, so the window mass is the counted pairs minus the scores' total. This
    spares stage 1 from measuring the window mass row by row. The sum runs in fp64: it is
    subtracted from a number of the same size.

    Args:
        scores: (B, Hsel, n_seg, Sk) fp32; n_counted: (B, Hsel, n_seg) fp32.
    """
    outside = scores.sum(dim=-1, dtype=torch.float64)
    return (n_counted.to(torch.float64) - outside).clamp(min=0.0).to(torch.float32)


def summarize_rows(
    wmass: torch.Tensor, stripe: torch.Tensor, rows: SampledRows, window: torch.Tensor, *,
    seqlen_q: int, seqlen_k: int, q_per_sel: int, finite: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row statistics of the sampled rows into the selection's inputs and the reports.

    Args:
        wmass, stripe: (B, Hq, n_slots) fp32 window mass and selected-stripe mass per slot
            (``stripe`` may be None before selection).
    Returns:
        window_sum (B, Hsel, n_seg), counted (B, Hsel, n_seg), retained_mean (B, Hq),
        retained_min (B, Hq). A (row, head) pair counts when the row is real, ``p >= w`` and
        (with ``finite``, (B, Hq, n_slots) bool) its statistics are finite.
    """
    batch, nheads_q, n_slots = wmass.shape
    counted, onehot, n_counted = counted_pairs(rows, window.to(wmass.device), batch=batch, seqlen_q=seqlen_q,
                                               seqlen_k=seqlen_k, q_per_sel=q_per_sel, finite=finite)
    n_seg = onehot.shape[1]
    n_sel = nheads_q // q_per_sel
    # torch.where, not a product: a left-out row's NaN must not reach the sums.
    window_sum = torch.einsum("bhs,sg->bhg", torch.where(counted, wmass, 0.0), onehot)
    window_sum = window_sum.view(batch, n_sel, q_per_sel, n_seg).sum(dim=2)
    retained = (wmass + stripe).clamp(max=1.0)
    any_counted = counted.any(dim=-1)
    mean = torch.where(counted, retained, 0.0).sum(-1) / counted.sum(-1).clamp(min=1)
    low = torch.where(counted, retained, torch.ones_like(retained)).min(dim=-1).values
    one = torch.ones_like(mean)
    return window_sum, n_counted, torch.where(any_counted, mean, one), torch.where(any_counted, low, one)


@dataclass(frozen=True)
class PlanSetup:
    """What both plan implementations (kernels and reference) derive from the inputs first.

    alpha (Hq,) fp32 and window (Hq,) int32 live on the CPU; window_dev is window on q's device;
    alpha_sel_dev (Hsel,) and reach_dev (Hsel, n_seg) are the selection's inputs on q's device,
    made once (a small host-to-device copy from pageable memory synchronises the stream);
    n_counted_dev (1, Hsel, n_seg) the counted (sampled row, head) pairs. ``extras`` holds the
    rule's own shape-only tensors (`sampleattn.rules.SelectionRule.shape_setup`).
    """

    batch: int
    seqlen_q: int
    seqlen_k: int
    nheads_q: int
    nheads_kv: int
    scale: float
    q_per_sel: int
    alpha: torch.Tensor
    window: torch.Tensor
    window_dev: torch.Tensor
    segment_rows: int
    rows: SampledRows
    min_window: int
    #: the largest difference of two windows of one selection group (host int: no device read)
    window_spread: int
    alpha_sel_dev: torch.Tensor
    reach_dev: torch.Tensor
    n_counted_dev: torch.Tensor
    extras: Mapping[str, object] = field(default_factory=dict)
    shape_key: tuple = ()

    @property
    def shape(self) -> dict:
        """The keyword arguments of the pair counts (`density_per_head`, `summarize_rows`)."""
        return {"seqlen_q": self.seqlen_q, "seqlen_k": self.seqlen_k, "q_per_sel": self.q_per_sel}


def prepare_plan(
    q: torch.Tensor, k: torch.Tensor, config: SampleAttentionConfig, *, causal: bool,
    scale: float | None, heads: Mapping[int, HeadOverride] | None,
) -> PlanSetup:
    """Validate the inputs and choose the per-head parameters, segments and sampled rows.

    Everything but the scale depends only on the shapes, the config and the head overrides, so
    it is cached: every layer of a model at one length reuses the same sampled-row tensors
    instead of rebuilding and uploading them (host work that dominates short inputs).
    """
    check_qk(q, k, causal=causal)
    batch, seqlen_q, nheads_q, _ = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    head_items = tuple(sorted((heads or {}).items()))
    key = (config, head_items, nheads_q, nheads_kv, q.shape[3], seqlen_q, seqlen_k, str(q.device))
    try:
        shared = _shape_setup(*key)
    except RuntimeError as error:
        if q.is_cuda and torch.cuda.is_current_stream_capturing():
            # A first call at these shapes uploads small tensors, which a graph capture forbids.
            raise RuntimeError(
                "SampleAttention was first called at these shapes, config and head overrides inside "
                "a CUDA-graph capture; run it once with the same inputs' shapes (and static_kmax) "
                "before capturing"
            ) from error
        raise
    return PlanSetup(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads_q,
                     nheads_kv=nheads_kv, scale=default_scale(q, scale), shape_key=key, **shared)


@functools.lru_cache(maxsize=128)
def _shape_setup(
    config: SampleAttentionConfig, head_items: tuple, nheads_q: int, nheads_kv: int, head_dim: int,
    seqlen_q: int, seqlen_k: int, device: str,
) -> dict:
    """The cached part of `prepare_plan` (tensors are never written after they are made)."""
    q_per_sel = nheads_q // nheads_kv if config.gqa_granularity == "kv_head" else 1
    alpha, window = head_parameters(config, nheads_q, seqlen_k, dict(head_items))
    segment_rows = segment_rows_for(config, seqlen_q)
    min_window = int(window.min())
    groups = window.view(-1, q_per_sel)
    window_spread = int((groups.max(dim=1).values - groups.min(dim=1).values).max())
    rows = choose_sampled_rows(
        seqlen_q, seqlen_k, n_rows=config.sampled_rows(seqlen_q), min_window=min_window,
        block=config.sample_block, segment_rows=segment_rows, device=device,
    )
    reach = reach_per_segment(window, rows, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                              segment_rows=segment_rows, q_per_sel=q_per_sel)
    window_dev = window.to(device)
    _, _, n_counted = counted_pairs(rows, window_dev, batch=1, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                                    q_per_sel=q_per_sel)
    extras = config.selection.shape_setup(config, alpha=alpha, window=window, q_per_sel=q_per_sel,
                                          head_dim=head_dim, seqlen_q=seqlen_q, seqlen_k=seqlen_k, device=device)
    return {"q_per_sel": q_per_sel, "alpha": alpha, "window": window, "window_dev": window_dev,
            "segment_rows": segment_rows, "rows": rows, "min_window": min_window, "window_spread": window_spread,
            "alpha_sel_dev": selection_alpha(alpha, q_per_sel).to(device), "reach_dev": reach.to(device),
            "n_counted_dev": n_counted, "extras": extras}


@dataclass(frozen=True)
class RowStatistics:
    """Stage 1's outputs on the sampled rows (from the kernels or from the reference).

    scores: (B, Hsel, n_seg, Sk) fp32 column scores (mass outside each row's window).
    wmass: (B, Hq, n_slots) fp32 window mass of each sampled row, or None when not measured
        (the selection then takes the window mass from the scores).
    stripe_mass_of: ``(col_idx, col_count) -> (B, Hq, n_slots)``, each sampled row's mass on the
        selected columns left of its window (for the reports).
    lse2: (B, Hq, n_slots) fp32 log-sum-exp of each sampled row's ``scale * log2(e) * q.k`` over
        its visible keys (+inf for padding slots), or None: rules that measure the retained mass
        of other parts of the mask read it.
    finite: (B, Hq, n_slots) bool, whether each sampled row's statistics are finite; rows
        without are left out of the window mass, the counts and the reports (their scores are
        already 0), and counted in the plan's ``nonfinite_rows``. None: all are.
    """

    scores: torch.Tensor
    wmass: torch.Tensor | None
    stripe_mass_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    lse2: torch.Tensor | None = None
    finite: torch.Tensor | None = None


def row_statistics(setup: PlanSetup, q: torch.Tensor, k: torch.Tensor, *, reports: bool) -> RowStatistics:
    """Stage 1 with the Triton kernels: exact statistics of the sampled rows, then column
    scores. The window mass per row is only measured for the reports; the selection gets it
    from the scores."""
    kernel_backend_available(q)
    from sampleattn.kernels import column_scores, sampled_row_stats, stripe_mass

    rows, window = setup.rows, setup.window_dev
    common = {"scale": setup.scale, "block_s": rows.block}
    lse2, wmass = sampled_row_stats(q, k, rows.rows, window, window_mass=reports, **common)
    scores = column_scores(q, k, rows.rows, window, lse2, rows.seg_blocks, q_per_sel=setup.q_per_sel,
                           tile_ranges=_score_tiles(setup), **common)
    return RowStatistics(
        # rows whose statistics are not finite got lse2 = +inf, as padding slots: left out
        scores=scores, wmass=wmass, lse2=lse2, finite=lse2 < float("inf"),
        stripe_mass_of=lambda col_idx, col_count: stripe_mass(
            q, k, rows.rows, window, lse2, rows.block_seg, col_idx, col_count,
            q_per_sel=setup.q_per_sel, **common),
    )



def selection_inputs(setup: PlanSetup, stats: RowStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """(window_sum, n_counted), both (B, Hsel, n_seg) fp32: the column selection's inputs."""
    if stats.wmass is None:
        n_counted = setup.n_counted_dev.expand(setup.batch, -1, -1)
        if stats.finite is not None:
            n_counted = n_counted - _left_out_pairs(setup, stats.finite)
        return window_mass_from_scores(stats.scores, n_counted), n_counted
    window_sum, n_counted, _, _ = summarize_rows(stats.wmass, torch.zeros_like(stats.wmass), setup.rows,
                                                 setup.window_dev, finite=stats.finite, **setup.shape)
    return window_sum, n_counted


def make_plan(
    setup: PlanSetup, config: SampleAttentionConfig, stats: RowStatistics | None, col_idx: torch.Tensor,
    col_count: torch.Tensor, *, reports: bool, keep_scores: bool, blocks: KeyBlocks | None = None, **extra,
) -> SparsePlan:
    """The `SparsePlan` of a selection, with its density and (``reports``) the sampled rows'
    retained mass on the window and the stripes (``stats.stripe_mass_of``); a rule whose mask
    has more parts plans without reports and measures them itself. ``extra`` fills the rule's
    own fields."""
    retained_mean = retained_min = None
    finite = stats.finite if stats is not None else None
    if reports:
        if stats is None or stats.wmass is None:
            raise ValueError("the plan's reports need each sampled row's window mass (wmass)")
        stripe = stats.stripe_mass_of(col_idx, col_count)
        _, _, retained_mean, retained_min = summarize_rows(stats.wmass, stripe, setup.rows, setup.window_dev,
                                                           finite=finite, **setup.shape)
    nonfinite_rows = None
    if finite is not None:
        nonfinite_rows = (_real_slots(setup.shape_key) & ~finite).sum(dim=-1, dtype=torch.int32)
    density = density_per_head(col_idx, col_count, setup.window_dev, segment_rows=setup.segment_rows,
                               blocks=blocks, window_spread=setup.window_spread, **setup.shape)
    return SparsePlan(
        batch=setup.batch, seqlen_q=setup.seqlen_q, seqlen_k=setup.seqlen_k, nheads_q=setup.nheads_q,
        nheads_kv=setup.nheads_kv, gqa_granularity=config.gqa_granularity, segment_rows=setup.segment_rows,
        scale=setup.scale, window=setup.window_dev, col_idx=col_idx, col_count=col_count,
        retained_mean=retained_mean, retained_min=retained_min, density=density,
        sampled_rows=setup.rows.valid_rows, scores=stats.scores if keep_scores and stats is not None else None,
        blocks=blocks, estimate_cost=config.selection.estimation_cost(config), nonfinite_rows=nonfinite_rows, **extra,
    )


@functools.lru_cache(maxsize=128)
def _counted_slots(shape_key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """`counted_pairs`' (1, Hq, n_slots) mask and (n_slots, n_seg) one-hot for a shape set-up."""
    shared = _shape_setup(*shape_key)
    counted, onehot, _ = counted_pairs(shared["rows"], shared["window_dev"], batch=1, seqlen_q=shape_key[5],
                                       seqlen_k=shape_key[6], q_per_sel=shared["q_per_sel"])
    return counted, onehot


@functools.lru_cache(maxsize=128)
def _real_slots(shape_key: tuple) -> torch.Tensor:
    """(1, 1, n_slots) bool: which slots of a shape set-up's sampled rows are real rows."""
    return (_shape_setup(*shape_key)["rows"].rows >= 0).view(1, 1, -1)


def _left_out_pairs(setup: PlanSetup, finite: torch.Tensor) -> torch.Tensor:
    """(B, Hsel, n_seg) fp32 counted pairs whose statistics are not finite (``finite``:
    (B, Hq, n_slots) bool): a few small device operations, no host synchronisation."""
    counted, onehot = _counted_slots(setup.shape_key)
    left_out = torch.einsum("bhs,sg->bhg", (counted & ~finite).to(torch.float32), onehot)
    return left_out.view(setup.batch, -1, setup.q_per_sel, onehot.shape[1]).sum(dim=2)


def plan(
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
    """Stages 1 and 2 with the Triton kernels, by the config's selection rule.

    Args:
        q: (B, Sq, Hq, D); k: (B, Sk, Hkv, D); Sq <= Sk, bottom-right causal alignment.
        config: hyperparameters; ``heads`` optionally overrides alpha/window_ratio per query head.
        scale: softmax scale, default ``1 / sqrt(D)``.
        keep_scores: keep the estimates (column scores, block scores) in the plan.
        reports: measure the sampled rows' retained mass (another pass over them); False
            leaves ``retained_mean``/``retained_min`` None, for the fast path.
    Returns:
        The `SparsePlan`.
    """
    setup = prepare_plan(q, k, config, causal=causal, scale=scale, heads=heads)
    kernel_backend_available(q)
    check_kernel_head_dim(q.shape[-1])
    return config.selection.plan(setup, q, k, config, keep_scores=keep_scores, reports=reports)


@functools.lru_cache(maxsize=128)
def _score_tiles_for(shape_key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    from sampleattn.kernels.sampling import SCORES_BLOCK_N, score_tile_ranges

    shared = _shape_setup(*shape_key)
    seqlen_q, seqlen_k = shape_key[5], shape_key[6]
    return score_tile_ranges(shared["rows"].rows, shared["window_dev"], seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                             block_s=shared["rows"].block, block_n=SCORES_BLOCK_N)


def _score_tiles(setup: PlanSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """The column-score kernel's tile ranges for this setup's sampled rows, made once per shape
    (a few small device operations that would otherwise run on every call)."""
    return _score_tiles_for(setup.shape_key)
