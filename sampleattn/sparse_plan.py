"""The plan object: `SparsePlan` (the mask of one attention call and its reports) and the key
blocks it may hold (`KeyBlocks`). `sampleattn.planning` makes plans; stage 3 only reads them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["KeyBlocks", "SparsePlan"]


@dataclass(frozen=True, eq=False)
class KeyBlocks:
    """Key blocks chosen per query block (method.md, section 4b).

    blk_idx: (B, Hsel, n_qblocks, kbmax) int32 key-block indices (block c holds keys
        [c * key_block, (c + 1) * key_block)), ascending, padded with ``n_kblocks``; query block b
        holds rows [b * block_rows, (b + 1) * block_rows).
    blk_count: (B, Hsel, n_qblocks) int32 valid entries of each blk_idx row.
    A row keeps the keys of its query block's chosen blocks that are causal for it; those inside
    its window are counted once, with the window.
    """

    blk_idx: torch.Tensor
    blk_count: torch.Tensor
    block_rows: int
    key_block: int
    #: whether the plan also holds stripe columns (stage 3 then skips them inside the blocks)
    has_columns: bool = True

    def member(self, seqlen_k: int, qblocks: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Hsel, n, Sk) bool: whether key j lies in a chosen block of query block t, for the
        query blocks ``qblocks`` ((n,) int64; all of them when None). Memory O(n * Sk)."""
        blk_idx = self.blk_idx if qblocks is None else self.blk_idx[:, :, qblocks.to(self.blk_idx.device)]
        n_kb = -(-seqlen_k // self.key_block)
        chosen = torch.zeros((*blk_idx.shape[:3], n_kb + 1), dtype=torch.bool, device=blk_idx.device)
        chosen.scatter_(3, blk_idx.to(torch.int64), True)
        return chosen[..., :n_kb].repeat_interleave(self.key_block, dim=3)[..., :seqlen_k]


@dataclass(frozen=True, eq=False)
class SparsePlan:
    """The mask ``M = Window(w) ∪ Stripes(I)`` of one attention call, and how good it is.

    Index tensors (what stage 3 reads):
        window: (Hq,) int32 window width per query head.
        col_idx: (B, Hsel, n_seg, kmax) int32 selected key columns, ascending, padded with
            ``seqlen_k`` to a width that is a multiple of 16; segment s covers query rows
            [s * segment_rows, (s+1) * segment_rows).
        col_count: (B, Hsel, n_seg) int32 valid entries of each col_idx row.
    Reports (on the sampled rows):
        retained_mean, retained_min: (B, Hq) fp32 retained attention mass; min is CRA proper.
            None when the plan was made with ``reports=False`` (they cost a third pass over
            the sampled rows; `sample_attention` skips it unless the plan is returned).
        density: (B, Hq) fp32 computed pairs / visible pairs.
        scores: (B, Hsel, n_seg, Sk) fp32 column scores (sum over sampled rows of the mass
            outside each row's window), or None.
        sampled_rows: (n_rows,) int64 the sampled query rows.
        nonfinite_rows: (B, Hq) int32 sampled rows left out of the estimate because their
            statistics were not finite (a NaN or Inf in the row's query or in a key it sees):
            they add nothing to the scores, the window mass or the reports. None for plans
            made by hand.
        candidate_density: (B, Hq) fp32 density of the window plus the candidates, for
            the rescored rule with reports (None otherwise); ranking_fraction: the share of query rows
            that ranked them. Their product, about, is the rescoring passes' cost in units of
            dense attention (both passes compute q.k only).
        blocks: the key blocks chosen per query block (`KeyBlocks`), for rules that choose them.
        block_scores: (B, Hsel, n_qblocks, n_kblocks) fp32 estimated mass of each key block per
            query block, kept with ``keep_scores`` (None otherwise).
        estimate_cost: cost of the plan's estimation passes in units of one dense causal attention
            (the rule's cost model, `sampleattn.rules.SelectionRule.estimation_cost`).
    """

    batch: int
    seqlen_q: int
    seqlen_k: int
    nheads_q: int
    nheads_kv: int
    gqa_granularity: str
    segment_rows: int
    scale: float
    window: torch.Tensor
    col_idx: torch.Tensor
    col_count: torch.Tensor
    retained_mean: torch.Tensor | None
    retained_min: torch.Tensor | None
    density: torch.Tensor
    sampled_rows: torch.Tensor
    scores: torch.Tensor | None = field(default=None, repr=False)
    candidate_density: torch.Tensor | None = field(default=None, repr=False)
    ranking_fraction: float = 0.0
    blocks: KeyBlocks | None = field(default=None, repr=False)
    block_scores: torch.Tensor | None = field(default=None, repr=False)
    estimate_cost: float = 0.0
    nonfinite_rows: torch.Tensor | None = field(default=None, repr=False)

    @property
    def q_per_sel(self) -> int:
        """Query heads that share one column set (1, or Hq // Hkv for KV-head granularity)."""
        return self.nheads_q // self.nheads_kv if self.gqa_granularity == "kv_head" else 1

    @property
    def nheads_sel(self) -> int:
        return self.nheads_q // self.q_per_sel

    @property
    def n_segments(self) -> int:
        return self.col_count.shape[2]

    @property
    def n_selected(self) -> torch.Tensor:
        """(B, Hsel) selected columns per selection head (summed over segments)."""
        return self.col_count.sum(dim=2)

    @property
    def mean_density(self) -> float:
        return float(self.density.mean().item())

    def selected_columns(self, batch: int, head: int, segment: int = 0) -> torch.Tensor:
        """The selected columns (int64, ascending) that query head ``head`` uses in a segment."""
        sel = head // self.q_per_sel
        count = int(self.col_count[batch, sel, segment].item())
        return self.col_idx[batch, sel, segment, :count].to(torch.int64)

    def to_dense(self) -> torch.Tensor:
        """The mask as a dense bool tensor (B, Hq, Sq, Sk). For small inputs and tests only."""
        from .reference import plan_mask_rows

        return plan_mask_rows(self, torch.arange(self.seqlen_q, device=self.col_idx.device))

    def __repr__(self) -> str:
        n_sel = self.n_selected.to(torch.float32)
        if self.retained_mean is None:
            retained = "retained=not measured"
        else:
            retained = (f"retained_mean={float(self.retained_mean.mean()):.4f}, "
                        f"retained_min={float(self.retained_min.min()):.4f}")
        blocks = ""
        if self.blocks is not None:
            blocks = (f"key_blocks={_span(self.blocks.blk_count.to(torch.float32))} of "
                      f"{self.blocks.key_block} per {self.blocks.block_rows} rows, ")
        return (
            f"SparsePlan(batch={self.batch}, seqlen_q={self.seqlen_q}, seqlen_k={self.seqlen_k}, "
            f"heads={self.nheads_q}/{self.nheads_kv}, granularity={self.gqa_granularity}, "
            f"segments={self.n_segments}, window={_span(self.window)}, "
            f"selected_columns={_span(n_sel)}, {blocks}density={self.mean_density:.4f}, {retained})"
        )


def _span(values: torch.Tensor) -> str:
    lo, hi = int(values.min().item()), int(values.max().item())
    return str(lo) if lo == hi else f"{lo}..{hi}"
