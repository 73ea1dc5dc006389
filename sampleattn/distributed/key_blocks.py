"""The block rule across ranks: pooled keys gathered, each rank scores its own query blocks.

A query block's key blocks are chosen from that block's rows' softmax shares over every pooled
key (`sampleattn.kernels.block_scores`), so the only data a rank needs from the others is the
pooled keys, ``1 / key_block`` of the keys: each rank sends the partial sums of the key blocks
its chunk touches, every rank adds them in rank order. A query block whose rows lie on two ranks
(chunks need not be multiples of the block) is scored in parts, and its partial scores (one row
of ``n_kblocks`` per selection head) are summed across those ranks. The choice itself is
`sampleattn.rules.block.select_blocks` on the rank's own query blocks.
"""

from __future__ import annotations

import torch

from sampleattn.planning import KeyBlocks, PlanSetup
from sampleattn.rules.block import select_blocks

from .comm import Communicator
from .layout import SequenceLayout

__all__ = ["choose_key_blocks_cp", "pooled_keys_cp", "query_blocks_of"]


def query_blocks_of(layout: SequenceLayout, rank: int, block_rows: int) -> torch.Tensor:
    """(n,) int64 ascending: the query blocks holding at least one row of ``rank``."""
    return torch.unique(torch.div(layout.positions(rank), block_rows, rounding_mode="floor"))


def pooled_keys_cp(k: torch.Tensor, layout: SequenceLayout, comm: Communicator, key_block: int) -> torch.Tensor:
    """`sampleattn.kernels.pooled_keys` of the whole sequence: (B, n_kblocks, Hkv, D) in k's dtype.

    k: (B, L, Hkv, D) this rank's keys. Each rank sends only the fp32 sums of its keys per block.
    """
    seqlen = layout.seqlen
    n_kb = -(-seqlen // key_block)
    touched = [query_blocks_of(layout, r, key_block).to(k.device) for r in range(layout.world)]
    width = max(len(t) for t in touched)
    mine = touched[comm.rank]
    block_of_key = torch.div(layout.positions(comm.rank, k.device), key_block, rounding_mode="floor")
    local_block = torch.searchsorted(mine, block_of_key)
    sums = torch.zeros((k.shape[0], width, k.shape[2], k.shape[3]), dtype=torch.float32, device=k.device)
    sums.index_add_(1, local_block, k.float())
    gathered = comm.all_gather(sums, "pooled_keys")
    total = torch.zeros((k.shape[0], n_kb, k.shape[2], k.shape[3]), dtype=torch.float32, device=k.device)
    for r, ids in enumerate(touched):
        total[:, ids] += gathered[r, :, :len(ids)]
    first = torch.arange(n_kb, device=k.device) * key_block
    size = torch.clamp(seqlen - first, max=key_block).to(torch.float32)
    return (total / size.view(1, -1, 1, 1)).to(k.dtype)


def _piece_scores_ref(q: torch.Tensor, kbar: torch.Tensor, *, first_row: int, key_block: int, block_rows: int,
                      q_per_sel: int, scale: float, seqlen: int, share_power: int = 1) -> torch.Tensor:
    """`sampleattn.rules.block.block_scores_ref` for rows ``[first_row, first_row + n)`` of the
    sequence (q: (B, n, Hq, D), the rows of one aligned run of query blocks) against the pooled
    keys ``kbar`` (B, n_kb, Hkv, D): (B, Hsel, n_qblocks of the run, n_kb) fp32."""
    batch, n, nheads_q, _ = q.shape
    n_kb, nheads_kv = kbar.shape[1], kbar.shape[2]
    kb = kbar.float().transpose(1, 2).repeat_interleave(nheads_q // nheads_kv, dim=1)
    logits = torch.matmul(q.transpose(1, 2).float(), kb.transpose(-1, -2)) * scale
    pos = (first_row + torch.arange(n, device=q.device)).view(-1, 1)
    first = torch.arange(n_kb, device=q.device).view(1, -1) * key_block
    size = torch.clamp(seqlen - first, max=key_block)
    visible = torch.minimum(pos - first + 1, size)
    logits = torch.where(visible > 0, logits + torch.log(visible.clamp(min=1).float()), float("-inf"))
    share = torch.softmax(logits, dim=-1) ** share_power
    block = torch.div(pos.flatten(), block_rows, rounding_mode="floor")
    block = block - block[0]
    per_block = torch.zeros(batch, nheads_q, int(block[-1]) + 1, n_kb, device=q.device)
    per_block.index_add_(2, block, share)
    return per_block.view(batch, nheads_q // q_per_sel, q_per_sel, -1, n_kb).sum(dim=2)


def _pieces(a: int, b: int, block_rows: int) -> list[tuple[int, int]]:
    """[a, b) cut so that every piece is a run of whole query blocks, or part of one block."""
    head = min(b, -(-a // block_rows) * block_rows)
    tail = max(head, b // block_rows * block_rows)
    return [(x, y) for x, y in ((a, head), (head, tail), (tail, b)) if y > x]


def block_scores_cp(setup: PlanSetup, q: torch.Tensor, kbar: torch.Tensor, layout: SequenceLayout,
                    comm: Communicator, *, key_block: int, block_rows: int, use_kernel: bool,
                    share_power: int = 1) -> torch.Tensor:
    """(B, Hsel, n, n_kblocks) fp32 block scores of this rank's query blocks (`query_blocks_of`),
    complete also for the blocks shared with another rank. q: (B, L, Hq, D) this rank's queries."""
    mine = query_blocks_of(layout, comm.rank, block_rows).to(q.device)
    n_kb = kbar.shape[1]
    scores = torch.zeros(q.shape[0], setup.nheads_q // setup.q_per_sel, len(mine), n_kb, device=q.device)
    offset = 0
    for a, b in layout.ranges(comm.rank):
        for x, y in _pieces(a, b, block_rows):
            rows = q[:, offset + x - a: offset + y - a]
            visible_kb = -(-y // key_block)
            if use_kernel:
                from sampleattn.kernels import block_scores

                # The kernel places the rows at the end of a key range of length y: only the shape of
                # this stand-in for k is read (the pooled keys are given).
                shape_k = kbar.new_empty((1, 1, 1, kbar.shape[3])).expand(q.shape[0], y, kbar.shape[2], kbar.shape[3])
                part = block_scores(rows, shape_k, key_block=key_block, block_rows=block_rows,
                                    q_per_sel=setup.q_per_sel, scale=setup.scale, kbar=kbar[:, :visible_kb],
                                    share_power=share_power)
            else:
                part = _piece_scores_ref(rows, kbar[:, :visible_kb], first_row=x, key_block=key_block,
                                         block_rows=block_rows, q_per_sel=setup.q_per_sel, scale=setup.scale,
                                         seqlen=layout.seqlen, share_power=share_power)
            first = torch.searchsorted(mine, torch.tensor(x // block_rows, device=q.device))
            scores[:, :, first:first + part.shape[2], :visible_kb] += part
        offset += b - a
    # Query blocks with rows on several ranks: every rank adds the same partial rows in rank order.
    owners = [query_blocks_of(layout, r, block_rows) for r in range(layout.world)]
    every = torch.cat(owners)
    blocks, times = torch.unique(every, return_counts=True)
    shared = blocks[times > 1].to(q.device)
    if len(shared):
        here = torch.isin(shared, mine)
        offer = torch.zeros(q.shape[0], scores.shape[1], len(shared), n_kb, device=q.device)
        offer[:, :, here] = scores[:, :, torch.searchsorted(mine, shared[here])]
        total = torch.zeros_like(offer)
        for part in comm.all_gather(offer, "shared_block_scores"):
            total += part
        scores[:, :, torch.searchsorted(mine, shared[here])] = total[:, :, here]
    return scores


def choose_key_blocks_cp(setup: PlanSetup, q: torch.Tensor, k: torch.Tensor, layout: SequenceLayout,
                         comm: Communicator, rule, *, block_rows: int,
                         use_kernel: bool) -> tuple[torch.Tensor, KeyBlocks]:
    """The block rule's key blocks for this rank's query blocks.

    Returns:
        query_blocks: (n,) int64 the global query blocks (`query_blocks_of`);
        blocks: `KeyBlocks` whose query-block axis runs over ``query_blocks`` (not over all blocks).
    """
    kbar = pooled_keys_cp(k, layout, comm, rule.key_block)
    scores = block_scores_cp(setup, q, kbar, layout, comm, key_block=rule.key_block, block_rows=block_rows,
                             use_kernel=use_kernel, share_power=rule.share_power)
    mine = query_blocks_of(layout, comm.rank, block_rows).to(q.device)
    candidates = setup.extras["candidates"].to(q.device)[:, mine]
    blocks = select_blocks(scores, candidates, rule.selection_target, block_rows=block_rows, key_block=rule.key_block,
                           has_columns=rule.stripes, sink_blocks=rule.sink_blocks, static=False)
    return mine, blocks

