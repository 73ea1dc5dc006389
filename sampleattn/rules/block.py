"""The block rule (method.md, section 4b): stripes plus key blocks chosen per query block.

``M = Window(w) ∪ Stripes(I) ∪ Blocks(B_b)``. The stripes are the paper's rule at the config's
alpha (optional). Then every query row scores every key block by its softmax share over the
blocks' mean-pooled keys (`sampleattn.kernels.block_scores`, about ``1 / key_block`` of a dense
pass, twice); per query block of ``block_m`` rows the shares are summed, the blocks that lie
inside every row's window count as the window's, and the other blocks are taken in descending
score until window plus chosen blocks hold ``beta`` of the block's estimated mass. One set of
columns shared by every row of a head cannot give rows key regions the others do not need;
key blocks per query block can.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from .base import SelectionRule, sampled_pair_share
from .sampled import select_stripes

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from sampleattn.config import SampleAttentionConfig
    from sampleattn.planning import KeyBlocks, PlanSetup, SparsePlan

__all__ = ["BlockRule", "block_scores_ref", "candidate_blocks", "select_blocks", "select_key_blocks_ref"]

#: ``blk_idx``'s width is padded to a multiple of this (as ``col_idx``'s: one compiled variant).
BLK_IDX_ALIGN = 16


class BlockRule(SelectionRule):
    """Window, key blocks per query block up to ``beta``, and optionally the paper's stripes.

    The defaults (beta 0.99, no stripes, the first block kept, every row scored) are the
    measured near-lossless point: at 128K with a 2% window, relative error 0.015 at 2.5x cuDNN
    in the middle layers (docs/benchmarks.md, "Selection rules and peers at 128K"). Stripes add
    the sampled rows' passes and, there, no accuracy the blocks do not already give.

    Attributes:
        beta: block-mass target in (0, 1]: the share of each query block's estimated mass that
            its window plus its chosen key blocks keep. 1 keeps every block (exact attention).
        key_block: keys per block (a power of two, 16 to 256; stage 3 reads a block as one or
            more of its key tiles). Query blocks are the config's ``block_m`` rows.
        stripes: also keep the paper's stripe columns (chosen at the config's alpha); False
            keeps window and blocks only and skips the sampled rows' passes.
        sink_blocks: the first key blocks every query block keeps whatever their score. A mean-
            pooled key stands badly for a block whose first keys are attention sinks (one key
            holding most of a row's mass): its mean is an ordinary key, so the estimate misses them.
        row_stride: score one query row in every ``row_stride`` (a power of two; ``block_m /
            row_stride`` at least 16): the estimate costs ``1 / row_stride`` as much. Rows of a
            block mostly want the same key blocks, and at 1M tokens the estimate is a large
            part of the plan.
        share_power: rank and accumulate the blocks by the sum over the rows of each row's
            share to this power, up to ``1 - (1 - beta) ** share_power`` of the query block's
            total (`selection_target`), so that a beta keeps about the same density. With 1 a
            block only one row of the 128 needs sums to at most 1/128 of the total and falls
            in the dropped tail; squares rank it by how much that row needs it.
        max_stripes: with ``stripes``, keep at most this many stripe columns per selection head
            (the highest-scoring ones, outside the sink blocks; fewer when alpha is reached
            first). None: as many as alpha takes. A block whose mass sits on one key far above
            the block's mean key is what the pooled estimate misses; a few heavy columns, found
            by a few sampled rows (a small ``sample_ratio``), keep those keys for every row at
            little density.
    """

    summary = "stripes plus key blocks per query block, scored by every row against pooled keys"
    name: Literal["block"] = "block"
    beta: float = Field(0.99, gt=0.0, le=1.0, description="the block-mass target, the share of each query block's estimated mass that its window plus its chosen key blocks keep")
    key_block: int = Field(128, ge=16, le=256, description="the keys per block, a power of two")
    stripes: bool = Field(False, description="whether the paper's stripe columns (at the config's alpha) are kept too")
    sink_blocks: int = Field(1, ge=0, description="how many leading key blocks every query block keeps")
    row_stride: int = Field(1, ge=1, le=8, description="the estimate scores one query row in every row_stride, a power of two")
    share_power: int = Field(1, ge=1, le=4, description="the power of each row's block shares before they are summed and selected")
    max_stripes: int | None = Field(None, ge=1, description="the most stripe columns kept per selection head (with stripes=True); None: as many as alpha takes")

    @model_validator(mode="after")
    def _stripes_to_limit(self) -> "BlockRule":
        if self.max_stripes is not None and not self.stripes:
            raise ValueError(f"max_stripes={self.max_stripes} limits the stripe columns, but stripes=False keeps none; "
                             "set stripes=True or leave max_stripes=None")
        return self

    @field_validator("key_block", "row_stride")
    @classmethod
    def _power_of_two(cls, value: int, info) -> int:
        if value & (value - 1):
            raise ValueError(f"{info.field_name}={value} must be a power of two")
        return value

    def check(self, config: "SampleAttentionConfig") -> None:
        if config.segment_rows is not None:
            raise ValueError("the block rule chooses key blocks per query block; leave segment_rows=None")
        if config.block_m // self.row_stride < 16:
            raise ValueError(f"row_stride={self.row_stride} leaves {config.block_m // self.row_stride} scored rows of "
                             f"each query block of block_m={config.block_m}; the estimate needs at least 16: "
                             "lower row_stride or raise block_m")

    def keeps_everything(self, config: "SampleAttentionConfig") -> bool:
        return self.beta >= 1.0 or config.window_ratio >= 1.0

    def hash_fields(self) -> dict[str, Any]:
        fields = {"selection": self.name, "beta": self.beta, "key_block": self.key_block, "stripes": self.stripes,
                  "sink_blocks": self.sink_blocks}
        # fields added later enter the hash only away from their default, so that stored
        # profiles keep the hash they were stored with
        if self.row_stride != 1:
            fields["row_stride"] = self.row_stride
        if self.share_power != 1:
            fields["share_power"] = self.share_power
        if self.max_stripes is not None:
            fields["max_stripes"] = self.max_stripes
        return fields

    @property
    def heavy_columns_from(self) -> int:
        """With ``max_stripes``, the first key a stripe column may be: the sink blocks' keys are
        kept for every row anyway, so they neither take one of the few columns nor make their
        block pay stage 3's column test. 0 without a limit (the paper's columns, as they are)."""
        return self.sink_blocks * self.key_block if self.max_stripes is not None else 0

    @property
    def selection_target(self) -> float:
        """The share of each query block's summed (powered) scores that the selection keeps."""
        return 1.0 - (1.0 - self.beta) ** self.share_power

    def shape_setup(self, config, *, alpha, window, q_per_sel, head_dim, seqlen_q, seqlen_k, device) -> dict:
        return {"candidates": candidate_blocks(window, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_rows=config.block_m,
                                               key_block=self.key_block, q_per_sel=q_per_sel).to(device)}

    # -- planning ----------------------------------------------------------------------------
    def _plan(self, setup, config, q, k, stats, scores, *, kernel, keep_scores, reports, retained_of) -> "SparsePlan":
        import torch

        from sampleattn.planning import make_plan

        if self.stripes:
            col_idx, col_count = select_stripes(setup, stats, max_count=self.max_stripes,
                                                covered=self.heavy_columns_from)
        else:
            col_idx = torch.full((setup.batch, setup.nheads_q // setup.q_per_sel, 1, 16),
                                 setup.seqlen_k, dtype=torch.int32, device=q.device)
            col_count = torch.zeros(col_idx.shape[:3], dtype=torch.int32, device=q.device)
        blocks = select_blocks(scores, setup.extras["candidates"], self.selection_target, block_rows=config.block_m,
                               key_block=self.key_block, has_columns=self.stripes, sink_blocks=self.sink_blocks,
                               kernel=kernel)
        plan = make_plan(setup, config, stats, col_idx, col_count, reports=False, keep_scores=keep_scores,
                         blocks=blocks, block_scores=scores if keep_scores else None)
        if not reports:
            return plan
        retained_mean, retained_min = retained_of(plan)
        return dataclasses.replace(plan, retained_mean=retained_mean, retained_min=retained_min)

    def plan(self, setup, q, k, config, *, keep_scores, reports) -> "SparsePlan":
        from sampleattn.kernels import block_scores, sampled_row_stats
        from sampleattn.planning import row_statistics

        stats = row_statistics(setup, q, k, reports=reports) if self.stripes else None
        scores = block_scores(q, k, key_block=self.key_block, block_rows=config.block_m, q_per_sel=setup.q_per_sel,
                              scale=setup.scale, row_stride=self.row_stride, share_power=self.share_power)

        def retained_of(plan):
            if stats is not None:
                lse2 = stats.lse2
            else:
                lse2, _ = sampled_row_stats(q, k, setup.rows.rows, setup.window_dev, scale=setup.scale,
                                            block_s=setup.rows.block, window_mass=False)
            return _retained_kernels(setup, q, k, plan, lse2, config)

        return self._plan(setup, config, q, k, stats, scores, kernel=True, keep_scores=keep_scores,
                          reports=reports, retained_of=retained_of)

    def plan_reference(self, setup, q, k, config, *, keep_scores, reports) -> "SparsePlan":
        from sampleattn.reference import row_statistics_ref

        stats = row_statistics_ref(setup, q, k) if self.stripes else None
        scores = block_scores_ref(q, k, key_block=self.key_block, block_rows=config.block_m,
                                  q_per_sel=setup.q_per_sel, scale=setup.scale, row_stride=self.row_stride,
                                  share_power=self.share_power)

        def retained_of(plan):
            return _retained_reference(setup, q, k, plan)

        return self._plan(setup, config, q, k, stats, scores, kernel=False, keep_scores=keep_scores,
                          reports=reports, retained_of=retained_of)

    # -- cost and search ---------------------------------------------------------------------
    def estimation_cost(self, config: "SampleAttentionConfig", plan=None) -> float:
        # the sampled rows' two passes (with stripes), then two passes of the scored rows over
        # the pooled keys, 1 / key_block of their pairs each
        return ((2.0 * sampled_pair_share(config, plan) if self.stripes else 0.0)
                + 2.0 / (self.key_block * self.row_stride))

    @classmethod
    def suggest(cls, trial: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        params = {"beta": trial.suggest_float("beta", 0.8, 0.998),
                  "key_block": trial.suggest_categorical("key_block", [64, 128]),
                  "row_stride": trial.suggest_categorical("row_stride", [1, 2, 4]),
                  "share_power": trial.suggest_categorical("share_power", [1, 2]),
                  "stripes": trial.suggest_categorical("stripes", [True, False])}
        if params["stripes"]:
            # a few heavy columns (from few sampled rows) or the paper's alpha-many
            params["max_stripes"] = trial.suggest_categorical("max_stripes", [64, 256, None])
        return params


def candidate_blocks(
    window: "torch.Tensor", *, seqlen_q: int, seqlen_k: int, block_rows: int, key_block: int, q_per_sel: int,
) -> "torch.Tensor":
    """(Hsel, n_qblocks) int64: how many leading key blocks of each query block can be chosen,
    those holding a key left of the window of the block's last row (``c * key_block <=
    last_pos - w``, with the selection group's narrowest window); the later blocks lie in every
    such row's window (or beyond the diagonal) and count as the window's."""
    import torch

    n_qb = -(-seqlen_q // block_rows)
    n_kb = -(-seqlen_k // key_block)
    qb = torch.arange(n_qb, dtype=torch.int64)
    last_pos = seqlen_k - seqlen_q + torch.clamp((qb + 1) * block_rows, max=seqlen_q) - 1
    w_min = window.to(torch.int64).view(-1, q_per_sel).min(dim=1).values
    reach = last_pos.view(1, -1) - w_min.view(-1, 1)
    return torch.clamp(torch.div(reach, key_block, rounding_mode="floor") + 1, min=0, max=n_kb)


def select_blocks(
    scores: "torch.Tensor", candidates: "torch.Tensor", beta: float, *, block_rows: int, key_block: int,
    has_columns: bool = True, sink_blocks: int = 0, static: bool | None = None, kernel: bool = False,
) -> "KeyBlocks":
    """Per query block, the fewest candidate key blocks by descending score whose mass, with
    the window's (the scores of the blocks after the candidates), reaches ``beta`` of the
    query block's total (blocks tied with the last one needed are kept too); the first
    ``sink_blocks`` candidates are always among them, their scores counted.

    Args:
        scores: (B, Hsel, n_qblocks, n_kblocks) fp32 (`sampleattn.kernels.block_scores`).
        candidates: (Hsel, n_qblocks) int64 (`candidate_blocks`), on the scores' device.
        static: pad to ``n_kblocks`` blocks (no host synchronisation) when True; None decides
            by `sampleattn.selection.uses_static_kmax`.
        kernel: select with the Triton kernel (`sampleattn.kernels.select_key_blocks`) rather
            than its PyTorch reference (`select_key_blocks_ref`); the two agree but where a
            block's score ties the threshold within fp32 rounding.
    Returns:
        `KeyBlocks`; with ``beta >= 1`` every candidate block, whatever its score.
    """
    import torch

    from sampleattn.planning import KeyBlocks
    from sampleattn.selection import uses_static_kmax

    n_kb = scores.shape[-1]
    if static is None:
        static = uses_static_kmax(scores.device)
    full_width = -(-n_kb // BLK_IDX_ALIGN) * BLK_IDX_ALIGN
    if kernel:
        from sampleattn.kernels import select_key_blocks
        blk_idx, count = select_key_blocks(scores, candidates, beta, sink_blocks=sink_blocks, width=full_width)
    else:
        blk_idx, count = select_key_blocks_ref(scores, candidates, beta, sink_blocks=sink_blocks, width=full_width)
    if not static:  # only as wide as the longest row needs (one host synchronisation)
        kbmax = max(int(count.max().item()), 1) if count.numel() else 1
        blk_idx = blk_idx[..., : -(-kbmax // BLK_IDX_ALIGN) * BLK_IDX_ALIGN]
    return KeyBlocks(blk_idx=blk_idx.contiguous(), blk_count=count, block_rows=block_rows,
                     key_block=key_block, has_columns=has_columns)


def select_key_blocks_ref(
    scores: "torch.Tensor", candidates: "torch.Tensor", beta: float, *, sink_blocks: int, width: int,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Plain-PyTorch oracle of `sampleattn.kernels.select_key_blocks` (same arguments and
    outputs): a descending sort per row gives the threshold, the score of the last block the
    prefix needs. Returns blk_idx (B, Hsel, n_qblocks, width) int32 ascending, padded with
    ``n_kblocks``, and blk_count (B, Hsel, n_qblocks) int32."""
    import torch

    n_kb = scores.shape[-1]
    ids = torch.arange(n_kb, device=scores.device)
    cand = ids.view(1, 1, -1) < candidates.to(scores.device).unsqueeze(-1)  # (Hsel, n_qb, n_kb)
    forced = cand & (ids.view(1, 1, -1) < sink_blocks)
    free = cand & ~forced
    need = (beta * scores.sum(-1) - torch.where(cand, 0.0, scores).sum(-1)
            - torch.where(forced, scores, 0.0).sum(-1))
    keep_all = (beta >= 1.0) | ~torch.isfinite(need)
    ordered = torch.sort(torch.where(free & (scores > 0), scores, 0.0), dim=-1, descending=True).values
    prefix = torch.cumsum(ordered, dim=-1)
    positive = (ordered > 0).sum(-1)
    taken = torch.minimum((prefix < need.unsqueeze(-1)).sum(-1) + 1, positive)
    tau = torch.gather(ordered, -1, (taken - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    tau = torch.where((need > 0) & (taken > 0), tau, float("inf"))  # nothing free is needed
    chosen = forced | (free & (scores > 0) & (scores >= tau.unsqueeze(-1)))
    chosen = torch.where(keep_all.unsqueeze(-1), cand.expand_as(chosen), chosen)
    count = chosen.sum(-1).to(torch.int32)
    ranked = torch.sort(torch.where(chosen, ids, n_kb), dim=-1).values.to(torch.int32)
    if width > n_kb:
        ranked = torch.nn.functional.pad(ranked, (0, width - n_kb), value=n_kb)
    return ranked[..., :width].contiguous(), count


def block_scores_ref(
    q: "torch.Tensor", k: "torch.Tensor", *, key_block: int, block_rows: int, q_per_sel: int, scale: float,
    row_stride: int = 1, share_power: int = 1,
) -> "torch.Tensor":
    """Plain-PyTorch oracle of `sampleattn.kernels.block_scores` (same arguments and output):
    (B, Hsel, n_qblocks, n_kblocks) fp32. Memory O(Sq * n_kblocks) per head."""
    import torch

    from sampleattn.kernels.block_scores import pooled_keys

    batch, seqlen_q, nheads_q, _ = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    kbar = pooled_keys(k, key_block).float()  # (B, n_kb, Hkv, D)
    n_kb = kbar.shape[1]
    kbar = kbar.transpose(1, 2).repeat_interleave(nheads_q // nheads_kv, dim=1)  # (B, Hq, n_kb, D)
    logits = torch.matmul(q.transpose(1, 2).float(), kbar.transpose(-1, -2)) * scale
    pos = (seqlen_k - seqlen_q + torch.arange(seqlen_q, device=q.device)).view(-1, 1)
    first = torch.arange(n_kb, device=q.device).view(1, -1) * key_block
    size = torch.clamp(seqlen_k - first, max=key_block)
    visible = torch.minimum(pos - first + 1, size)
    logits = torch.where(visible > 0, logits + torch.log(visible.clamp(min=1).float()), float("-inf"))
    share = torch.softmax(logits, dim=-1) ** share_power  # every row sees block 0: no row is all -inf
    n_qb = -(-seqlen_q // block_rows)
    # the scored rows: the last of each group of row_stride rows, or the last query row
    group_first = torch.arange(0, n_qb * block_rows, row_stride, device=q.device)
    scored = torch.clamp(group_first + row_stride - 1, max=seqlen_q - 1)
    share = torch.where((group_first < seqlen_q).view(1, 1, -1, 1), share[:, :, scored], 0.0)
    per_block = share.view(batch, nheads_q, n_qb, block_rows // row_stride, n_kb).sum(dim=3)
    return per_block.view(batch, nheads_q // q_per_sel, q_per_sel, n_qb, n_kb).sum(dim=2)


def _retained_reference(setup: "PlanSetup", q, k, plan: "SparsePlan") -> tuple:
    """(mean, min) (B, Hq) of the sampled rows' exact mass on the plan's mask."""
    import torch

    from sampleattn.reference import _expand_kv, plan_mask_rows

    rows = setup.rows.valid_rows.to(q.device)
    pos = (setup.seqlen_k - setup.seqlen_q + rows).view(1, 1, -1, 1)
    j = torch.arange(setup.seqlen_k, device=q.device).view(1, 1, 1, -1)
    s = torch.matmul(q[:, rows].transpose(1, 2).float(),
                     _expand_kv(k, setup.nheads_q).float().transpose(-1, -2)) * setup.scale
    visible = j <= pos
    p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
    kept = torch.where(plan_mask_rows(plan, rows) & visible, p, 0.0).sum(-1).clamp(max=1.0)
    return kept.mean(-1), kept.min(-1).values


def _retained_kernels(setup: "PlanSetup", q, k, plan: "SparsePlan", lse2, config) -> tuple:
    """(mean, min) (B, Hq) of the sampled rows' retained mass, from stage 3's log-sum-exp over
    the mask (an ``lse_only`` pass) against their exact one (stage 1's)."""
    import torch

    from sampleattn.kernels import sparse_attention_fwd

    blocks = plan.blocks
    _, lse = sparse_attention_fwd(q, k, k, plan.col_idx, setup.window_dev, segment_rows=setup.segment_rows,
                                  q_per_sel=setup.q_per_sel, scale=setup.scale, block_m=config.block_m,
                                  block_n=config.block_n, lse_only=True, blk_idx=blocks.blk_idx,
                                  block_rows=blocks.block_rows, key_block=blocks.key_block,
                                  has_columns=blocks.has_columns)
    slots = setup.rows.rows.to(q.device, torch.int64)
    real = slots >= 0
    masked = lse[:, :, slots.clamp(min=0)]
    full = lse2.to(q.device) * math.log(2.0)
    kept = torch.exp(masked - full).clamp(max=1.0)
    kept = torch.where(real.view(1, 1, -1), kept, float("nan"))
    mean = torch.nanmean(kept, dim=-1)
    low = torch.where(real.view(1, 1, -1), kept, 1.0).min(dim=-1).values
    return mean, low
