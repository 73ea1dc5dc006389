"""The plan of a context-parallel call: what every rank agrees on, and what only it holds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sampleattn.planning import KeyBlocks, PlanSetup, SparsePlan, make_plan

from .comm import Communicator
from .layout import SequenceLayout

__all__ = ["ContextParallelPlan", "gather_plan"]


@dataclass(frozen=True, eq=False)
class ContextParallelPlan:
    """A rank's view of the plan.

    plan: the `SparsePlan` of the whole sequence without key blocks (window and stripe columns,
        the same on every rank; its density counts those parts only when key blocks are chosen).
    query_blocks: (n,) int64 global query blocks holding this rank's rows, and blocks: their
        `KeyBlocks` (query-block axis over ``query_blocks``); None for rules without key blocks.
    With a group of one, ``plan`` is the single-process operator's plan itself (key blocks
    included) and `gather_plan` returns it.
    """

    plan: SparsePlan
    layout: SequenceLayout
    rank: int
    setup: PlanSetup | None = None
    config: object = None
    query_blocks: torch.Tensor | None = None
    blocks: KeyBlocks | None = None


def gather_plan(cp_plan: ContextParallelPlan, comm: Communicator) -> SparsePlan:
    """The whole plan, key blocks of every query block included, on every rank (a collective:
    every rank calls it). For tests and inspection of small inputs; the operator never needs it."""
    if cp_plan.setup is None or cp_plan.blocks is None:
        return cp_plan.plan
    blocks = cp_plan.blocks
    n_kb = -(-cp_plan.plan.seqlen_k // blocks.key_block)
    n_qb = -(-cp_plan.plan.seqlen_q // blocks.block_rows)
    sizes = comm.all_gather(torch.tensor([len(cp_plan.query_blocks), blocks.blk_idx.shape[3]],
                                         device=blocks.blk_idx.device), "plan_gather").tolist()
    rows, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch, n_sel = blocks.blk_idx.shape[:2]
    idx = torch.full((batch, n_sel, rows, width), n_kb, dtype=torch.int32, device=blocks.blk_idx.device)
    idx[:, :, :blocks.blk_idx.shape[2], :blocks.blk_idx.shape[3]] = blocks.blk_idx
    count = torch.zeros((batch, n_sel, rows), dtype=torch.int32, device=idx.device)
    count[:, :, :blocks.blk_count.shape[2]] = blocks.blk_count
    ids = torch.full((rows,), -1, dtype=torch.int64, device=idx.device)
    ids[:len(cp_plan.query_blocks)] = cp_plan.query_blocks
    all_idx = comm.all_gather(idx, "plan_gather")
    all_count = comm.all_gather(count, "plan_gather")
    all_ids = comm.all_gather(ids, "plan_gather")
    blk_idx = torch.full((batch, n_sel, n_qb, width), n_kb, dtype=torch.int32, device=idx.device)
    blk_count = torch.zeros((batch, n_sel, n_qb), dtype=torch.int32, device=idx.device)
    for r in range(comm.world):
        valid = all_ids[r] >= 0
        blk_idx[:, :, all_ids[r][valid]] = all_idx[r][:, :, valid]
        blk_count[:, :, all_ids[r][valid]] = all_count[r][:, :, valid]
    width = max(int(blk_count.max()), 1)
    width = -(-width // 16) * 16
    if blk_idx.shape[3] < width:
        blk_idx = torch.nn.functional.pad(blk_idx, (0, width - blk_idx.shape[3]), value=n_kb)
    whole = KeyBlocks(blk_idx=blk_idx[..., :width].contiguous(), blk_count=blk_count, block_rows=blocks.block_rows,
                      key_block=blocks.key_block, has_columns=blocks.has_columns)
    plan = cp_plan.plan
    return make_plan(cp_plan.setup, cp_plan.config, None, plan.col_idx, plan.col_count, reports=False,
                     keep_scores=False, blocks=whole)
