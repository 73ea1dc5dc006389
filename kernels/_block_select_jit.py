"""Triton code of the block rule's selection: per query block, the key blocks that reach a
mass target, without sorting.

Only ``@triton.jit`` functions live here; `block_select.py` launches them.

Taking blocks in descending score until their mass reaches ``need`` keeps exactly the blocks
whose score is at least a threshold ``tau``: the largest value whose blocks at or above it
still hold ``need``. Scores are non-negative fp32, whose bit patterns read as int32 are ordered
like the values, so ``tau`` is found by bisection over the bit patterns (at most 31 steps, each
a masked sum over the row), and the chosen blocks are written in ascending order by a running
prefix count. A sort of every row of a ``(B, Hsel, n_qblocks, n_kblocks)`` score tensor, which
at 1M tokens holds 2**29 entries, is what this replaces.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: bit pattern of +inf in fp32: above every finite score
_INF_BITS = tl.constexpr(0x7F800000)


@triton.jit
def _mass_at_or_above(row, first, last, bits_lo, BLOCK_C: tl.constexpr):
    """Sum of the scores in ``row[first:last]`` whose fp32 bit pattern is at least ``bits_lo``."""
    mass = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c0 in range(first, last, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        s = tl.load(row + offs, mask=offs < last, other=0.0)
        bits = s.to(tl.int32, bitcast=True)
        mass += tl.where(bits >= bits_lo, s, 0.0)
    return tl.sum(mass, 0)


@triton.jit(do_not_specialize=["n_sel", "sink_blocks", "n_kblocks", "width", "stride_sb", "stride_sh", "stride_sq", "stride_ib",
                               "stride_ih", "stride_iq", "stride_nb", "stride_nh", "stride_ch"])
def block_select_kernel(
    SCORES, CAND, BLK_IDX, BLK_COUNT,
    stride_sb, stride_sh, stride_sq,
    stride_ch,
    stride_ib, stride_ih, stride_iq,
    stride_nb, stride_nh,
    n_sel, n_kblocks, width, beta, sink_blocks,
    BLOCK_C: tl.constexpr,
):
    """One program: query block ``program_id(0)`` of selection head ``program_id(1) % n_sel`` in
    batch ``program_id(1) // n_sel``.

    Shapes: SCORES (B, Hsel, n_qblocks, n_kblocks) fp32, non-negative; CAND (Hsel, n_qblocks)
    int32, the leading key blocks that may be chosen (the later ones are the window's);
    BLK_IDX (B, Hsel, n_qblocks, width) int32 out, chosen blocks ascending then ``n_kblocks``;
    BLK_COUNT (B, Hsel, n_qblocks) int32 out.
    """
    qb = tl.program_id(0)
    pid_bs = tl.program_id(1)
    b = (pid_bs // n_sel).to(tl.int64)
    sel = (pid_bs % n_sel).to(tl.int64)
    row = SCORES + b * stride_sb + sel * stride_sh + qb.to(tl.int64) * stride_sq
    cand = tl.load(CAND + sel * stride_ch + qb)
    n_forced = tl.minimum(cand, sink_blocks)

    # The row's mass, the window's (blocks after the candidates) and the forced sinks'.
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    outside = tl.zeros([BLOCK_C], dtype=tl.float32)
    forced = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c0 in range(0, n_kblocks, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        s = tl.load(row + offs, mask=offs < n_kblocks, other=0.0)
        total += s
        outside += tl.where(offs >= cand, s, 0.0)
        forced += tl.where(offs < n_forced, s, 0.0)
    need = beta * tl.sum(total, 0) - tl.sum(outside, 0) - tl.sum(forced, 0)
    # Keep every candidate at beta 1, and where the scores are not finite (no ranking to trust).
    keep_all = (beta >= 1.0) | (need != need) | (need == float("inf"))

    # Bisection: mass(bits >= lo) >= need > mass(bits >= hi). lo = 1 leaves zero scores out.
    lo = tl.full([], 1, dtype=tl.int32)
    hi = tl.full([], _INF_BITS, dtype=tl.int32)
    if need <= 0.0:
        lo = hi  # the window and the sinks already hold the target
    if keep_all:
        lo = hi
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        if _mass_at_or_above(row, n_forced, cand, mid, BLOCK_C) >= need:
            lo = mid
        else:
            hi = mid

    # The chosen blocks in ascending order, then padding up to the width.
    out = BLK_IDX + b * stride_ib + sel * stride_ih + qb.to(tl.int64) * stride_iq
    count = tl.zeros([], dtype=tl.int32)
    for c0 in range(0, cand, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        s = tl.load(row + offs, mask=offs < cand, other=0.0)
        bits = s.to(tl.int32, bitcast=True)
        chosen = (offs < cand) & ((offs < n_forced) | keep_all | (bits >= lo))
        flags = chosen.to(tl.int32)
        slot = count + tl.cumsum(flags, 0) - 1
        tl.store(out + slot, offs, mask=chosen)
        count += tl.sum(flags, 0)
    for c0 in range((count // BLOCK_C) * BLOCK_C, width, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        tl.store(out + offs, tl.full([BLOCK_C], 0, dtype=tl.int32) + n_kblocks, mask=(offs >= count) & (offs < width))
    tl.store(BLK_COUNT + b * stride_nb + sel * stride_nh + qb, count)
