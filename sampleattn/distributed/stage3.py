"""Stage 3 on one rank: the operator's stage-3 kernel over the rank's own keys, then over the keys
fetched from the others, the two merged by log-sum-exp.

Each piece of the rank's rows (one with the contiguous layout, two with zigzag), rows
``[start, stop)`` of the sequence, makes two calls of `sampleattn.kernels.sparse_attention_fwd`
over disjoint key sets, each a `SparsePlan` view of the plan (its column and key-block lists
translated to the call's keys) with the rows placed among the keys by ``q_offset``:

* **own**: the piece's keys from ``own_from`` (``start`` rounded up to a key block) to ``stop``,
  a slice of the rank's chunk. Nothing travels: it runs while the fetched keys are in flight.
* **far**: the keys left of ``own_from`` that the piece's rows keep, in one compact tensor per
  (batch, KV head): the chosen key blocks that lie left of the window region, whole; then the
  selected columns outside those blocks; padding to a key block; then the window region
  ``[region_start, own_from)`` as one contiguous run (``region_start``: the widest window's left
  end at the piece's first row, rounded down to a key block). Every row's window band lies in
  the region, so the kernel's band loop reads contiguous keys, and every key block starts at a
  multiple of the key block, as the kernel reads them. Keys the piece never reads (region keys
  no row keeps, padding) are zeros.

The kernel places the query tiles from the piece's first row, and reads one key-block list per
``block_rows`` rows and one column list per segment: a piece that starts inside a query block
(or a segment, with several) gets padding rows in front, from the block's first row, whose
output is dropped. Without key blocks and with one column segment, nothing is padded.

With ``backend="torch"`` the same calls run in plain PyTorch (`sampleattn.reference`'s mask of
the view, a bounded number of rows at a time): the oracle, and the path on a CPU without Triton.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from sampleattn.sparse_plan import KeyBlocks, SparsePlan

from .fetch import FetchedKeys
from .layout import SequenceLayout
from .local_mask import merge_by_lse
from .plan import ContextParallelPlan

__all__ = ["KeyStore", "attend_rank"]

#: Elements of one step's (batch, heads, rows, keys) logits in the PyTorch path (fp32: 512 MiB):
#: the rows per step shrink as the keys grow, so memory stays bounded at any length.
STEP_ELEMENTS = 1 << 27


@dataclass(frozen=True)
class Piece:
    """One run of the rank's rows, ``[start, stop)`` of the sequence, at ``chunk_index`` in the
    rank's chunk. ``q_start <= start``: the first row given to the kernel (padding rows before
    ``start``); ``own_from``: the first key of the own call."""

    start: int
    stop: int
    chunk_index: int
    q_start: int
    own_from: int


@dataclass(frozen=True)
class KeyStore:
    """Every key a rank holds after the fetch, its own and the fetched ones, addressable by
    (batch, KV head, position).

    row_of: (B, Hkv, S) int64 the row of k_rows and v_rows holding each key, -1 where absent;
    k_rows, v_rows: (n, D).
    """

    row_of: torch.Tensor
    k_rows: torch.Tensor
    v_rows: torch.Tensor

    @classmethod
    def build(cls, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, fetched: FetchedKeys,
              seqlen: int) -> "KeyStore":
        """k, v: (B, L, Hkv, D) the rank's chunk; positions: (L,) int64 their rows in the sequence;
        fetched: what `sampleattn.distributed.fetch.fetch_keys_start` brought."""
        batch, local, nheads_kv, head_dim = k.shape
        where, kv = fetched
        row_of = torch.full((batch, nheads_kv, seqlen), -1, dtype=torch.int64, device=k.device)
        b = torch.arange(batch, device=k.device).view(-1, 1, 1)
        h = torch.arange(nheads_kv, device=k.device).view(1, -1, 1)
        row_of[:, :, positions] = (b * local + torch.arange(local, device=k.device).view(1, 1, -1)) * nheads_kv + h
        row_of[where[:, 0], where[:, 1], where[:, 2]] = k.numel() // head_dim + torch.arange(len(where),
                                                                                            device=k.device)
        return cls(row_of=row_of, k_rows=torch.cat([k.reshape(-1, head_dim), kv[:, 0].to(k.dtype)]),
                   v_rows=torch.cat([v.reshape(-1, head_dim), kv[:, 1].to(v.dtype)]))

    def gather(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (B, Hkv, n) int64, -1 for none -> k, v (B, n, Hkv, D), zeros where none."""
        b = torch.arange(positions.shape[0], device=positions.device).view(-1, 1, 1)
        h = torch.arange(positions.shape[1], device=positions.device).view(1, -1, 1)
        rows = torch.where(positions >= 0, self.row_of[b, h, positions.clamp(min=0)], -1)
        present = (rows >= 0).unsqueeze(-1)
        k = torch.where(present, self.k_rows[rows.clamp(min=0)], 0.0)
        v = torch.where(present, self.v_rows[rows.clamp(min=0)], 0.0)
        return k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()


def _pieces(layout: SequenceLayout, rank: int, *, align: int, key_block: int) -> list[Piece]:
    pieces, index = [], 0
    for start, stop in layout.ranges(rank):
        own_from = min(stop, -(-start // key_block) * key_block)
        pieces.append(Piece(start, stop, index, start - start % align, own_from))
        index += stop - start
    return pieces


def _piece_lists(cp_plan: ContextParallelPlan, piece: Piece) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plan's lists for the piece's padded rows, in sequence positions: columns (B, Hsel,
    n_seg, kmax) and key blocks (B, Hsel, n_qblocks, kbmax) (None without key blocks), int64."""
    plan, rows = cp_plan.plan, piece.stop - piece.q_start
    col = plan.col_idx
    if plan.n_segments > 1:  # q_start is a segment's first row
        first = piece.q_start // plan.segment_rows
        col = col[:, :, first:first + -(-rows // plan.segment_rows)]
    blk = None
    if cp_plan.blocks is not None:
        block_rows = cp_plan.blocks.block_rows
        wanted = piece.q_start // block_rows + torch.arange(-(-rows // block_rows), device=col.device)
        blk = cp_plan.blocks.blk_idx[:, :, torch.searchsorted(cp_plan.query_blocks.to(col.device), wanted)]
        blk = blk.to(torch.int64)
    return col.to(torch.int64), blk


def _view(cp_plan: ContextParallelPlan, *, seqlen_q: int, seqlen_k: int, col: torch.Tensor,
          blk: torch.Tensor | None) -> SparsePlan:
    """The plan with its lists replaced by a call's (sorted, padded with the call's sentinels;
    ``col`` (B, Hsel, n_seg, kmax), ``blk`` (B, Hsel, n_qblocks, kbmax) key indices of the call).
    The reports stay the whole sequence's."""
    col = torch.sort(col, dim=-1).values.to(torch.int32).contiguous()
    blocks = None
    if blk is not None:
        base = cp_plan.blocks
        n_kb = -(-seqlen_k // base.key_block)
        blk = torch.sort(blk, dim=-1).values.to(torch.int32).contiguous()
        blocks = KeyBlocks(blk_idx=blk, blk_count=(blk < n_kb).sum(-1, dtype=torch.int32),
                           block_rows=base.block_rows, key_block=base.key_block, has_columns=base.has_columns)
    return dataclasses.replace(cp_plan.plan, seqlen_q=seqlen_q, seqlen_k=seqlen_k, col_idx=col,
                               col_count=(col < seqlen_k).sum(-1, dtype=torch.int32), blocks=blocks)


def _kv_of_sel(plan: SparsePlan, device) -> torch.Tensor:
    """(1, Hsel, 1, 1) int64: the KV head each selection head reads."""
    q_per_kv = plan.nheads_q // plan.nheads_kv
    return (torch.arange(plan.nheads_sel, device=device) * plan.q_per_sel // q_per_kv).view(1, -1, 1, 1)


def _own_call(q_rows, k, v, cp_plan: ContextParallelPlan, piece: Piece, key_block: int):
    """The piece's rows against its own keys ``[own_from, stop)``: (q, k, v, plan view, q_offset)."""
    lo = piece.chunk_index + piece.own_from - piece.start
    hi = piece.chunk_index + piece.stop - piece.start
    n_keys = piece.stop - piece.own_from
    col, blk = _piece_lists(cp_plan, piece)
    col = torch.where((col >= piece.own_from) & (col < piece.stop), col - piece.own_from, n_keys)
    if blk is not None:  # own_from is a multiple of the key block here (n_keys > 0)
        first, stop_block = piece.own_from // key_block, -(-piece.stop // key_block)
        blk = torch.where((blk >= first) & (blk < stop_block), blk - first, -(-n_keys // key_block))
    view = _view(cp_plan, seqlen_q=q_rows.shape[1], seqlen_k=n_keys, col=col, blk=blk)
    return q_rows, k[:, lo:hi], v[:, lo:hi], view, piece.q_start - piece.own_from


def _left_of_region(col: torch.Tensor, blk: torch.Tensor | None, plan: SparsePlan, region: int,
                    key_block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the kept keys left of the window region go in the far call's compact tensor, per
    (batch, KV head): the key blocks some selection head of the KV head chose, whole, in order;
    then the selected columns outside those blocks; padded to a key block.

    Args:
        col: (B, Hsel, n_seg, kmax), blk: (B, Hsel, n_qblocks, kbmax) or None, sequence positions
            (`_piece_lists`); region: a multiple of ``key_block``.
    Returns:
        slot: (B, Hkv, region) int64 the call index of each key left of the region
            (meaningful where a row keeps it); block_slot: (B, Hkv, region // key_block) int64 the
            call block of each chosen block; positions: (B, Hkv, n_sparse) int64 the sequence
            position held at each call index (-1: padding).
    """
    device = col.device
    batch, nheads_kv = plan.batch, plan.nheads_kv
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    n_left_blocks = region // key_block
    chosen = torch.zeros(batch, nheads_kv, n_left_blocks + 1, dtype=torch.bool, device=device)
    if blk is not None:  # the last slot takes every block at or right of the region
        chosen[b.expand_as(blk), _kv_of_sel(plan, device).expand_as(blk), blk.clamp(max=n_left_blocks)] = True
    chosen = chosen[..., :n_left_blocks]
    in_block = chosen.repeat_interleave(key_block, dim=2)
    stray = torch.zeros(batch, nheads_kv, region + 1, dtype=torch.bool, device=device)
    stray[b.expand_as(col), _kv_of_sel(plan, device).expand_as(col), col.clamp(max=region)] = True
    stray = stray[..., :region] & ~in_block
    n_blocks = chosen.sum(-1, keepdim=True)
    block_slot = torch.cumsum(chosen, dim=-1) - 1
    j = torch.arange(region, device=device)
    slot = torch.where(in_block, block_slot.repeat_interleave(key_block, dim=2) * key_block + j % key_block,
                       n_blocks * key_block + torch.cumsum(stray, dim=-1) - 1)
    n_sparse = int((n_blocks.squeeze(-1) * key_block + stray.sum(-1)).max()) if region else 0
    n_sparse = -(-n_sparse // key_block) * key_block
    positions = torch.full((batch, nheads_kv, n_sparse), -1, dtype=torch.int64, device=device)
    b_at, h_at, j_at = torch.nonzero(in_block | stray).unbind(1)
    positions[b_at, h_at, slot[b_at, h_at, j_at]] = j_at
    return slot, block_slot, positions


def _far_call(q_rows, store: KeyStore, cp_plan: ContextParallelPlan, piece: Piece, key_block: int):
    """The piece's rows against the compact tensor of the keys left of ``own_from`` that they
    keep (module docstring): (q, k, v, plan view, q_offset)."""
    plan = cp_plan.plan
    device = q_rows.device
    # Every row's window band starts at or right of the region's first key.
    region = min(piece.own_from, max(0, (piece.start - int(plan.window.max()) + 1) // key_block * key_block))
    col, blk = _piece_lists(cp_plan, piece)
    slot, block_slot, positions = _left_of_region(col, blk, plan, region, key_block)
    window_run = torch.arange(region, piece.own_from, device=device).expand(plan.batch, plan.nheads_kv, -1)
    k_far, v_far = store.gather(torch.cat([positions, window_run], dim=2))
    n_keys = k_far.shape[1]
    shift = positions.shape[2] - region  # call index of a key in the window region: position + shift
    b = torch.arange(plan.batch, device=device).view(-1, 1, 1, 1)
    kv = _kv_of_sel(plan, device)
    left = slot[b, kv, col.clamp(max=max(region - 1, 0))] if region else col
    col = torch.where(col < region, left, torch.where(col < piece.own_from, col + shift, n_keys))
    if blk is not None:
        n_left_blocks = region // key_block
        left = block_slot[b, kv, blk.clamp(max=max(n_left_blocks - 1, 0))] if n_left_blocks else blk
        inside = blk * key_block < piece.own_from
        blk = torch.where(blk < n_left_blocks, left,
                          torch.where(inside, blk + shift // key_block, -(-n_keys // key_block)))
    view = _view(cp_plan, seqlen_q=q_rows.shape[1], seqlen_k=n_keys, col=col, blk=blk)
    return q_rows, k_far, v_far, view, piece.q_start + shift


def _run_call(q, k, v, view: SparsePlan, q_offset: int, *, backend: str, block_m: int,
              block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One call: out (B, Sq, Hq, D) fp32 and lse (B, Hq, Sq) fp32 (-inf for a row with no key)."""
    if backend == "triton":
        from sampleattn.kernels import sparse_attention_fwd

        blocks = {}
        if view.blocks is not None:
            blocks = {"blk_idx": view.blocks.blk_idx, "block_rows": view.blocks.block_rows,
                      "key_block": view.blocks.key_block, "has_columns": view.blocks.has_columns}
        out, lse = sparse_attention_fwd(q, k, v, view.col_idx, view.window, segment_rows=view.segment_rows,
                                        q_per_sel=view.q_per_sel, scale=view.scale, block_m=block_m,
                                        block_n=block_n, return_lse=True, q_offset=q_offset, **blocks)
        return out.float(), lse
    from sampleattn.reference import attention_ref, plan_mask_rows

    batch, rows, nheads_q, head_dim = q.shape
    out = torch.empty(batch, rows, nheads_q, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(batch, nheads_q, rows, dtype=torch.float32, device=q.device)
    step = max(16, STEP_ELEMENTS // max(1, batch * nheads_q * k.shape[1]))
    for r0 in range(0, rows, step):
        part = torch.arange(r0, min(rows, r0 + step), device=q.device)
        mask = plan_mask_rows(view, part, q_offset=q_offset)
        # the mask holds the causal bound of the view's rows; attention_ref's own is bottom-right
        o, l = attention_ref(q[:, part].float(), k.float(), v.float(), causal=False, scale=view.scale, mask=mask,
                             return_lse=True)
        out[:, part], lse[:, :, part] = o, l
    return out, lse


def attend_rank(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cp_plan: ContextParallelPlan,
                layout: SequenceLayout, rank: int, fetched: Callable[[], FetchedKeys], *, backend: str,
                block_m: int, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3 of this rank's rows.

    Args:
        q: (B, L, Hq, D), k, v: (B, L, Hkv, D) the rank's chunk.
        fetched: waits for the keys fetched from the other ranks (`fetch_keys_start`'s result);
            called once, after the own calls.
        backend: ``"triton"`` (the stage-3 kernel) or ``"torch"``.
        block_m, block_n: the kernel's tiles (the config's).
    Returns:
        out (B, L, Hq, D) fp32 and lse (B, Hq, L) fp32.
    """
    plan, blocks = cp_plan.plan, cp_plan.blocks
    key_block = blocks.key_block if blocks is not None else 1
    align = blocks.block_rows if blocks is not None else 1
    if plan.n_segments > 1:
        align = math.lcm(align, plan.segment_rows)
    pieces = _pieces(layout, rank, align=align, key_block=key_block)
    queries = []
    for piece in pieces:
        rows = q[:, piece.chunk_index:piece.chunk_index + piece.stop - piece.start]
        if piece.q_start < piece.start:
            rows = torch.cat([rows.new_zeros(rows.shape[0], piece.start - piece.q_start, *rows.shape[2:]), rows], 1)
        queries.append(rows)
    run = dict(backend=backend, block_m=block_m, block_n=block_n)
    own = [_run_call(*_own_call(rows, k, v, cp_plan, piece, key_block), **run) if piece.own_from < piece.stop
           else None for piece, rows in zip(pieces, queries)]
    store = KeyStore.build(k, v, layout.positions(rank, q.device), fetched(), layout.seqlen)
    outs, lses = [], []
    for piece, rows, own_part in zip(pieces, queries, own):
        parts = [own_part] if own_part is not None else []
        if piece.own_from > 0:
            parts.append(_run_call(*_far_call(rows, store, cp_plan, piece, key_block), **run))
        out, lse = parts[0] if len(parts) == 1 else merge_by_lse(*parts[0], *parts[1])
        pad = piece.start - piece.q_start
        outs.append(out[:, pad:])
        lses.append(lse[:, :, pad:])
    return torch.cat(outs, dim=1), torch.cat(lses, dim=2)
