"""Helpers for tests and benchmarks of context parallelism on one machine: a free port for a small
gloo group, and every rank's stage 3 run in one process from a single-process plan."""

from __future__ import annotations

import dataclasses
import socket

import torch

from sampleattn.sparse_plan import SparsePlan

from .key_blocks import query_blocks_of
from .layout import SequenceLayout, join_sequence, split_sequence
from .local_mask import LocalMask
from .plan import ContextParallelPlan
from .stage3 import attend_rank

__all__ = ["free_port", "stage3_of_every_rank"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for ``init_method=tcp://127.0.0.1:PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_plan(plan: SparsePlan, config, spec: SequenceLayout, rank: int) -> ContextParallelPlan:
    """What `sample_attention_cp` plans on ``rank``, cut from the single-process plan."""
    if plan.blocks is None:
        return ContextParallelPlan(plan=plan, layout=spec, rank=rank, config=config)
    mine = query_blocks_of(spec, rank, plan.blocks.block_rows).to(plan.col_idx.device)
    blocks = dataclasses.replace(plan.blocks, blk_idx=plan.blocks.blk_idx[:, :, mine],
                                 blk_count=plan.blocks.blk_count[:, :, mine])
    return ContextParallelPlan(plan=dataclasses.replace(plan, blocks=None), layout=spec, rank=rank, config=config,
                               query_blocks=mine, blocks=blocks)


def _fetch_needed(k: torch.Tensor, v: torch.Tensor, cp_plan: ContextParallelPlan, spec: SequenceLayout, rank: int):
    """The keys the rank's rows keep that other ranks hold, as `fetch_keys_start` brings them."""
    positions = spec.positions(rank, k.device)
    mask = LocalMask.from_plan(cp_plan.plan, positions, cp_plan.query_blocks, cp_plan.blocks)
    need = mask.needed_keys(k.shape[2], spec.seqlen)
    need[:, :, positions] = False
    where = torch.nonzero(need)
    b, h, j = where.unbind(1)
    return where, torch.stack([k[b, j, h], v[b, j, h]], dim=1)


def stage3_of_every_rank(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: SparsePlan, config, *,
                         layout: str, world: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3 of ``world`` ranks (`sampleattn.distributed.stage3.attend_rank`), one after the other
    in this process, with the single-process ``plan`` of the whole sequence: each rank gets its
    chunk and exactly the keys its fetch would bring.

    Args:
        q: (B, S, Hq, D), k, v: (B, S, Hkv, D) the whole sequence; config: the plan's config
            (its ``block_m`` and ``block_n`` are the kernel's tiles).
    Returns:
        out (B, S, Hq, D) and lse (B, Hq, S), fp32, the ranks' rows joined back in order.
    """
    spec = SequenceLayout(layout, world, q.shape[1] // world)
    outs, lses = [], []
    for rank in range(world):
        cp_plan = _rank_plan(plan, config, spec, rank)
        chunk = [split_sequence(t, layout, world, rank) for t in (q, k, v)]
        out, lse = attend_rank(*chunk, cp_plan, spec, rank, lambda: _fetch_needed(k, v, cp_plan, spec, rank),
                               backend=backend, block_m=config.block_m, block_n=config.block_n)
        outs.append(out)
        lses.append(lse)
    return join_sequence(outs, layout), join_sequence(lses, layout, dim=2)
