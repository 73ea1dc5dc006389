"""Triton code of stage 3: FlashAttention over a local window band plus gathered key columns.

Only ``@triton.jit`` functions live here; `sparse_attention.py` validates, allocates and
launches. Everything is in the log2 domain: scores are multiplied by ``scale * log2(e)`` and
exponentiated with ``exp2``.

For a query block of rows with positions ``p_i = q_offset + i`` among the keys (the launcher
passes ``q_offset = seqlen_k - seqlen_q``, bottom-right alignment, unless told otherwise: a chunk
of a longer sequence may start left of its keys' end or right of it) and window ``w``, row ``i``
attends to

* (a) gathered columns ``j`` of the selection with ``j <= p_i - w`` (left of its window),
* (a') with ``HAS_BLOCKS``, the keys ``j <= p_i - w`` of the key blocks chosen for the query
  block, less the selected columns (those are (a)'s), and
* (b) the contiguous band ``p_i - w < j <= p_i``.

A selected column or block key that falls inside row i's window is excluded from (a) and (a')
by the mask and counted once, in (b). The band loop is split into masked edge tiles and
unmasked interior tiles; so is the block loop (blocks left of every row's window need no row
mask).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._softmax_jit import online_softmax_step, start_query_block
from ._specialization import LENGTH_ARGS


@triton.jit
def _band_tiles(
    acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, pos, w, seqlen_k, start, end,
    offs_d, d_mask, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, LSE_ONLY: tl.constexpr,
):
    """Attend to the key tiles [start, end) of the window band; ``start`` is tile-aligned."""
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if MASKED:
            n_mask = offs_n < seqlen_k
            kv_mask = n_mask[:, None] & d_mask[None, :]
        else:
            kv_mask = d_mask[None, :]
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        if LSE_ONLY:
            v = k  # unused
        else:
            v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :],
                        mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            keep = (offs_n[None, :] <= pos[:, None]) & (offs_n[None, :] > pos[:, None] - w)
            keep = keep & n_mask[None, :]
            s = tl.where(keep, s, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, qk_scale, DOT_PRECISION, LSE_ONLY)
    return acc, m_i, l_i


@triton.jit
def _block_tiles(
    acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, blk_base, member_base, flag_base, pos, w, seqlen_k,
    first, last, offs_d, d_mask, qk_scale,
    KEY_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, SKIP_COLUMNS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, LSE_ONLY: tl.constexpr,
):
    """Attend to the chosen key blocks ``[first, last)`` of the query block's list, each as
    ``KEY_BLOCK // BLOCK_N`` key tiles. Without ``MASKED`` every key is left of every row's
    window (no row mask); ``SKIP_COLUMNS`` drops the keys that are selected columns
    (``member_base[j] != 0``), which (a) already counted. The column test runs only on blocks
    that hold a column (``flag_base[c] != 0``): with a few stripe columns most blocks hold
    none, and their tiles then cost what they cost without stripes."""
    for i in range(first, last):
        c = tl.load(blk_base + i).to(tl.int64)
        if SKIP_COLUMNS:
            has_column = tl.load(flag_base + c) != 0
        for sub in tl.static_range(KEY_BLOCK // BLOCK_N):
            offs_n = c * KEY_BLOCK + sub * BLOCK_N + tl.arange(0, BLOCK_N)
            if MASKED:
                n_mask = offs_n < seqlen_k
                kv_mask = n_mask[:, None] & d_mask[None, :]
            else:
                kv_mask = d_mask[None, :]
            k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
            if LSE_ONLY:
                v = k  # unused
            else:
                v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            if MASKED:
                keep = n_mask[None, :] & (offs_n[None, :] <= pos[:, None] - w)
                if SKIP_COLUMNS:
                    if has_column:
                        keep = keep & (tl.load(member_base + offs_n, mask=n_mask, other=1) == 0)[None, :]
                s = tl.where(keep, s, float("-inf"))
            elif SKIP_COLUMNS:
                if has_column:
                    taken = tl.load(member_base + offs_n) != 0
                    s = tl.where(taken[None, :], float("-inf"), s)
            acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, qk_scale, DOT_PRECISION, LSE_ONLY)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=LENGTH_ARGS + ["q_offset", "stride_lb", "stride_lh", "stride_eb", "stride_eh",
                                               "stride_xb", "stride_xh", "stride_xq", "stride_ub", "stride_uh",
                                               "stride_fb", "stride_fh"])
def sparse_attention_fwd_kernel(
    Q, K, V, O, LSE, COL_IDX, COL_END, COL_ALL, WINDOW, K_SEL, V_SEL, BLK_IDX, BLK_END, BLK_ALL, MEMBER, BLK_FLAG,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_gb, stride_gh, stride_gs, stride_gc,
    stride_ob, stride_om, stride_oh,
    stride_lb, stride_lh,
    stride_cb, stride_ch, stride_cs,
    stride_eb, stride_eh,
    stride_xb, stride_xh, stride_xq,
    stride_ub, stride_uh,
    stride_fb, stride_fh,
    nheads_q, seqlen_q, seqlen_k, q_offset, qk_scale,
    q_per_kv, q_per_sel, segment_rows, m_stride, m_first, block_rows,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RETURN_LSE: tl.constexpr, LSE_ONLY: tl.constexpr,
    COMPACT: tl.constexpr, HAS_BLOCKS: tl.constexpr, KEY_BLOCK: tl.constexpr, SKIP_COLUMNS: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, query head); the grid is
    (launched query blocks * q_per_kv, batch * Hkv).

    Shapes: Q, O (B, Sq, Hq, D); K, V (B, Sk, Hkv, D); LSE (B, Hq, Sq) fp32; query row i sits at
    key position ``q_offset + i`` (any integer: keys outside [0, Sk) do not exist);
    COL_IDX (B, Hsel, n_seg, kmax) int32, ascending; COL_END (B, Hq, n_mblocks) int32, the
    number of leading COL_IDX entries that lie left of the block's last row's window; COL_ALL
    (same shape and strides) the number left of its first row's window; WINDOW (Hq,) int32.

    Program ``pid_m`` takes query block ``pid_m * m_stride + m_first`` (stage 3: 1 and 0).
    ``LSE_ONLY`` (the rescoring pass) skips V, O and the P.V products and writes only LSE.
    With ``COMPACT``, K_SEL and V_SEL (B, Hsel, n_seg, kmax, D) hold the selected columns' keys
    and values side by side (entry c is row COL_IDX[..., c] of K and V): the column loops then
    read contiguous tiles, as the band does, instead of gathering rows through the indices.
    With ``HAS_BLOCKS``: BLK_IDX (B, Hsel, n_qblocks, kbmax) int32 the chosen key blocks of each
    query block of ``block_rows`` rows, ascending; BLK_END and BLK_ALL (B, Hq, n_mblocks) int32
    (the strides of COL_END) how many leading entries hold a key left of the window of the
    block's last row, and lie wholly left of its first row's window; MEMBER (B, Hsel, Sk) uint8,
    nonzero for selected columns, and BLK_FLAG (B, Hsel, n_kblocks) uint8, nonzero for key blocks
    that hold one (both read with ``SKIP_COLUMNS``).
    """
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    # Program order: the query heads that share a KV head run side by side on the same query
    # block, so the key tiles one of them loads are still in L2 for the others (stage 3 at
    # long lengths streams more keys than L2 holds); and the last query blocks, which see the
    # most keys, start first, so the short ones fill the tail of the launch.
    pid_q = tl.program_id(0)
    n_launched = tl.num_programs(0) // q_per_kv
    pid_m = (n_launched - 1 - pid_q // q_per_kv) * m_stride + m_first
    pid_bkv = tl.program_id(1)
    nheads_kv = nheads_q // q_per_kv
    b = (pid_bkv // nheads_kv).to(tl.int64)
    h = (pid_bkv % nheads_kv) * q_per_kv + pid_q % q_per_kv
    kv_h = (h // q_per_kv).to(tl.int64)
    sel_h = (h // q_per_sel).to(tl.int64)
    h64 = h.to(tl.int64)

    row0 = pid_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < seqlen_q
    offset = q_offset
    pos = offset + offs_m
    w = tl.load(WINDOW + h)

    q, k_base, v_base, m_i, l_i, acc = start_query_block(
        Q, K, V, b, h64, kv_h, stride_qb, stride_qm, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
        offs_m, m_mask, offs_d, d_mask, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D)

    # (a) gathered stripe columns left of the window band. The first COL_ALL entries lie left of
    # the window of the block's first row, so every row keeps them: whole tiles of those need
    # no mask. The rest (up to COL_END, left of the last row's window) are masked per row.
    seg = row0 // segment_rows
    n_cols = tl.load(COL_END + b * stride_eb + h64 * stride_eh + pid_m)
    n_all = tl.load(COL_ALL + b * stride_eb + h64 * stride_eh + pid_m)
    n_unmasked = (n_all // BLOCK_N) * BLOCK_N
    col_base = COL_IDX + b * stride_cb + sel_h * stride_ch + seg * stride_cs
    sel_off = b * stride_gb + sel_h * stride_gh + seg * stride_gs
    for c0 in range(0, n_unmasked, BLOCK_N):
        offs_c = c0 + tl.arange(0, BLOCK_N)
        if COMPACT:
            tile = sel_off + offs_c[:, None].to(tl.int64) * stride_gc + offs_d[None, :]
            k = tl.load(K_SEL + tile, mask=d_mask[None, :], other=0.0)
            if LSE_ONLY:
                v = k  # unused
            else:
                v = tl.load(V_SEL + tile, mask=d_mask[None, :], other=0.0)
        else:
            cols64 = tl.load(col_base + offs_c).to(tl.int64)
            k = tl.load(k_base + cols64[:, None] * stride_kn + offs_d[None, :], mask=d_mask[None, :], other=0.0)
            if LSE_ONLY:
                v = k  # unused
            else:
                v = tl.load(v_base + cols64[:, None] * stride_vn + offs_d[None, :], mask=d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, qk_scale, DOT_PRECISION, LSE_ONLY)
    for c0 in range(n_unmasked, n_cols, BLOCK_N):
        offs_c = c0 + tl.arange(0, BLOCK_N)
        c_mask = offs_c < n_cols
        cols = tl.load(col_base + offs_c, mask=c_mask, other=0)
        if COMPACT:
            tile = sel_off + offs_c[:, None].to(tl.int64) * stride_gc + offs_d[None, :]
            k_ptr, v_ptr = K_SEL + tile, V_SEL + tile
        else:
            cols64 = cols.to(tl.int64)
            k_ptr = k_base + cols64[:, None] * stride_kn + offs_d[None, :]
            v_ptr = v_base + cols64[:, None] * stride_vn + offs_d[None, :]
        k = tl.load(k_ptr, mask=c_mask[:, None] & d_mask[None, :], other=0.0)
        if LSE_ONLY:
            v = k  # unused
        else:
            v = tl.load(v_ptr, mask=c_mask[:, None] & d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        keep = c_mask[None, :] & (cols[None, :] <= pos[:, None] - w)
        s = tl.where(keep, s, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, qk_scale, DOT_PRECISION, LSE_ONLY)

    if HAS_BLOCKS:
        # (a') the chosen key blocks: those wholly left of the first row's window first (no row
        # mask), then those that reach into some row's window.
        blk_base = BLK_IDX + b * stride_xb + sel_h * stride_xh + (row0 // block_rows).to(tl.int64) * stride_xq
        member_base = MEMBER + b * stride_ub + sel_h * stride_uh
        flag_base = BLK_FLAG + b * stride_fb + sel_h * stride_fh
        n_blk = tl.load(BLK_END + b * stride_eb + h64 * stride_eh + pid_m)
        n_blk_all = tl.load(BLK_ALL + b * stride_eb + h64 * stride_eh + pid_m)
        acc, m_i, l_i = _block_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, blk_base, member_base,
                                     flag_base, pos, w, seqlen_k, 0, n_blk_all, offs_d, d_mask, qk_scale,
                                     KEY_BLOCK=KEY_BLOCK, BLOCK_N=BLOCK_N, MASKED=False, SKIP_COLUMNS=SKIP_COLUMNS,
                                     DOT_PRECISION=DOT_PRECISION, LSE_ONLY=LSE_ONLY)
        acc, m_i, l_i = _block_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, blk_base, member_base,
                                     flag_base, pos, w, seqlen_k, n_blk_all, n_blk, offs_d, d_mask, qk_scale,
                                     KEY_BLOCK=KEY_BLOCK, BLOCK_N=BLOCK_N, MASKED=True, SKIP_COLUMNS=SKIP_COLUMNS,
                                     DOT_PRECISION=DOT_PRECISION, LSE_ONLY=LSE_ONLY)

    # (b) the window band [first_pos - w + 1, last_pos], masked at its edges only.
    first_pos = offset + row0
    last_pos = offset + tl.minimum(row0 + BLOCK_M, seqlen_q) - 1
    band_lo = tl.maximum(first_pos - w + 1, 0)
    # Rows right of the last key (q_offset > Sk - Sq) see no key past it.
    band_hi = tl.minimum(tl.where(w > 0, last_pos + 1, band_lo), seqlen_k)
    tile_lo = (band_lo // BLOCK_N) * BLOCK_N
    # Interior: keys every row of the block keeps (inside every row's window, causal for all).
    inner_lo = tl.maximum(tile_lo, ((last_pos - w + 1 + BLOCK_N - 1) // BLOCK_N) * BLOCK_N)
    inner_hi = tl.maximum(inner_lo, ((first_pos + 1) // BLOCK_N) * BLOCK_N)
    inner_hi = tl.minimum(inner_hi, (band_hi // BLOCK_N) * BLOCK_N)
    inner_hi = tl.maximum(inner_hi, inner_lo)
    left_end = tl.minimum(inner_lo, band_hi)
    acc, m_i, l_i = _band_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, pos, w,
                                seqlen_k, tile_lo, left_end, offs_d, d_mask, qk_scale,
                                BLOCK_N=BLOCK_N, MASKED=True, DOT_PRECISION=DOT_PRECISION, LSE_ONLY=LSE_ONLY)
    acc, m_i, l_i = _band_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, pos, w,
                                seqlen_k, inner_lo, inner_hi, offs_d, d_mask, qk_scale,
                                BLOCK_N=BLOCK_N, MASKED=False, DOT_PRECISION=DOT_PRECISION, LSE_ONLY=LSE_ONLY)
    right_lo = tl.maximum(inner_hi, left_end)
    right_lo = tl.maximum(right_lo, tile_lo)
    # right_lo is tile-aligned unless left_end clipped at band_hi, in which case the loop is empty.
    acc, m_i, l_i = _band_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, pos, w,
                                seqlen_k, right_lo, band_hi, offs_d, d_mask, qk_scale,
                                BLOCK_N=BLOCK_N, MASKED=True, DOT_PRECISION=DOT_PRECISION, LSE_ONLY=LSE_ONLY)

    # A row that kept no key (an empty window and no column) outputs 0, never NaN; a NaN sum
    # (a NaN or Inf in the row's query or kept keys) stays NaN, in the output and the lse.
    has_keys = l_i != 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    if not LSE_ONLY:
        o_base = O + b * stride_ob + h64 * stride_oh
        tl.store(o_base + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    if RETURN_LSE:
        # Back from the log2 domain: lse = ln(2) * (m + log2(l)).
        lse = tl.where(has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453,
                       float("-inf"))
        tl.store(LSE + b * stride_lb + h64 * stride_lh + offs_m, lse, mask=m_mask)
