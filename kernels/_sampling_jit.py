"""Triton code of stage 1: exact softmax statistics of the sampled query rows, column scores.

Only ``@triton.jit`` functions live here; `sampling.py` launches them.

Sampled rows come as a list ``ROWS`` of query-row indices grouped in blocks of ``BLOCK_S``
(padded with -1). Three passes, each a grid of independent programs (no atomics, so the
results are deterministic):

1. `sampled_row_stats_kernel`: per sampled row and query head, the log-sum-exp over all
   visible keys (log2 domain) and, for the plan's reports only, the share of the row's mass
   inside its own window (stage 2 gets the window mass from the column scores instead: a row's
   mass outside its window is what it adds to the scores, and its whole mass is 1). A row
   whose log-sum-exp is not finite (a NaN or Inf in its query or in a key it sees) gets
   lse2 = +inf, as a padding slot: the later passes then leave it out of the estimate.
2. `column_scores_kernel`: per key tile and selection head (one query head, or all query heads
   of a KV group), ``c_j = sum_r P_rj [j <= p_r - w]`` over the sampled rows of a segment.
3. `stripe_mass_kernel`: per sampled row, the mass that the selected columns keep outside its
   window (to report the minimum retained mass, CRA proper).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._specialization import LENGTH_ARGS


@triton.jit
def _sampled_rows_tile(
    Q, ROWS, WINDOW, pid_r, b, h_first, stride_qb, stride_qm, stride_qh, seqlen_q, seqlen_k,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, GROUP: tl.constexpr,
):
    """Row block ``pid_r`` of the sampled rows for GROUP query heads from ``h_first`` on, as one
    (GROUP * BLOCK_S, BLOCK_D) query tile: tile row ``i`` is head ``h_first + i // BLOCK_S`` and
    slot ``i % BLOCK_S``. Returns, per tile row: its query head (int64), slot, row index (-1 for
    padding) and mask, absolute position and the head's window; then the head-dim offsets and
    mask, and the query tile (zeros for padding)."""
    offs_i = tl.arange(0, GROUP * BLOCK_S)
    h = h_first + offs_i // BLOCK_S
    h64 = h.to(tl.int64)
    slots = pid_r * BLOCK_S + offs_i % BLOCK_S
    rows = tl.load(ROWS + slots)
    r_mask = rows >= 0
    pos = seqlen_k - seqlen_q + rows
    w = tl.load(WINDOW + h)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h64[:, None] * stride_qh + rows[:, None].to(tl.int64) * stride_qm
                + offs_d[None, :], mask=r_mask[:, None] & d_mask[None, :], other=0.0)
    return h64, slots, rows, r_mask, pos, w, offs_d, d_mask, q


@triton.jit
def _sampled_lse_step(m_i, l_in, l_out, s, qk_scale, inside, TRACK_WINDOW: tl.constexpr):
    """Fold one tile of raw scores ``s = q.k`` (BLOCK_S, BLOCK_N) into the running max and sums,
    all in the log2 domain of ``qk_scale * s``. The scale is applied inside one fused
    multiply-add with the max (``s * scale - m``; the scale is positive, so the max of the
    scaled scores is the scaled max): one operation per score fewer than scaling first.

    With ``TRACK_WINDOW`` the sum is split by ``inside`` (in the row's window or not); without
    it only ``l_out`` is kept (``inside`` is ignored). Masked entries of ``s`` are -inf; a row
    with nothing visible yet uses 0 as its reference, so -inf - -inf never happens."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.exp2(m_i - m_ref)
    p = tl.exp2(s * qk_scale - m_ref[:, None])
    if TRACK_WINDOW:
        l_in = l_in * rescale + tl.sum(tl.where(inside, p, 0.0), 1)
        l_out = l_out * rescale + tl.sum(tl.where(inside, 0.0, p), 1)
    else:
        l_out = l_out * rescale + tl.sum(p, 1)
    return m_new, l_in, l_out


@triton.jit(do_not_specialize=LENGTH_ARGS + ["n_row_blocks"])
def sampled_row_stats_kernel(
    Q, K, ROWS, WINDOW, LSE2, WMASS,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_lb, stride_lh,
    nheads_q, seqlen_q, seqlen_k, qk_scale, q_per_kv, n_row_blocks,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, TRACK_WINDOW: tl.constexpr,
):
    """Grid (B * Hq / GROUP, n_row_blocks). Writes LSE2 (B, Hq, n_rows_padded) fp32 and, with
    ``TRACK_WINDOW``, WMASS (same shape): the share of each row's mass inside its window.

    One program: BLOCK_S sampled rows (slots) of GROUP query heads that share a KV head, as one
    (GROUP * BLOCK_S, BLOCK_D) tile of queries, tile row ``i`` being head ``i // BLOCK_S`` and
    slot ``i % BLOCK_S``. Grouping the heads of a KV group loads each key tile once for all of
    them (GROUP divides q_per_kv).

    Program order: heads vary fastest and row blocks run from the last to the first. The last
    blocks see the most keys (the longest programs), so they start first and the grid ends
    on short programs instead of waiting for a long one (longest-first scheduling).

    Key tiles wholly left of every real row's position (and, with ``TRACK_WINDOW``, of every
    row's window) need no mask: they run in a loop of their own, and only the last tiles of
    the block (its rows' causal edges) are masked.
    """
    pid_g = tl.program_id(0)
    pid_r = n_row_blocks - 1 - tl.program_id(1)
    groups = nheads_q // GROUP
    b = (pid_g // groups).to(tl.int64)
    h_first = (pid_g % groups) * GROUP
    kv_h = (h_first // q_per_kv).to(tl.int64)
    h64, slots, rows, r_mask, pos, w, offs_d, d_mask, q = _sampled_rows_tile(
        Q, ROWS, WINDOW, pid_r, b, h_first, stride_qb, stride_qm, stride_qh, seqlen_q, seqlen_k,
        HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_S=BLOCK_S, GROUP=GROUP)
    k_base = K + b * stride_kb + kv_h * stride_kh

    m_i = tl.full([GROUP * BLOCK_S], float("-inf"), dtype=tl.float32)
    l_in = tl.zeros([GROUP * BLOCK_S], dtype=tl.float32)
    l_out = tl.zeros([GROUP * BLOCK_S], dtype=tl.float32)
    last = tl.max(tl.where(r_mask, pos, -1), 0)
    # Keys every real row sees (j <= its position), outside every row's window with
    # TRACK_WINDOW (j <= p - w); padding rows (q = 0) accumulate values that are never written.
    if TRACK_WINDOW:
        free_end = tl.min(tl.where(r_mask, pos - w, seqlen_k), 0) + 1
    else:
        free_end = tl.min(tl.where(r_mask, pos, seqlen_k), 0) + 1
    free_end = tl.maximum(tl.minimum(free_end, last + 1), 0)
    free_end = (free_end // BLOCK_N) * BLOCK_N
    for n0 in range(0, free_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                    mask=d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        m_i, l_in, l_out = _sampled_lse_step(m_i, l_in, l_out, s, qk_scale, s, TRACK_WINDOW=False)
    for n0 in range(free_end, last + 1, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < seqlen_k
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        visible = r_mask[:, None] & n_mask[None, :] & (offs_n[None, :] <= pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        inside = offs_n[None, :] > (pos - w)[:, None]
        m_i, l_in, l_out = _sampled_lse_step(m_i, l_in, l_out, s, qk_scale, inside, TRACK_WINDOW=TRACK_WINDOW)

    total = l_in + l_out
    has_keys = r_mask & (total > 0.0)  # False for a NaN total too
    lse2 = m_i + tl.log2(tl.where(has_keys, total, 1.0))
    # The row's one finiteness flag: a non-finite row is stored as +inf, as padding (left out).
    usable = has_keys & (tl.abs(lse2) < float("inf"))
    lse2 = tl.where(usable, lse2, float("inf"))
    out = b * stride_lb + h64 * stride_lh + slots
    tl.store(LSE2 + out, lse2)
    if TRACK_WINDOW:
        wmass = tl.where(usable, l_in / tl.where(usable, total, 1.0), 1.0)
        tl.store(WMASS + out, wmass)


@triton.jit
def _column_score_tile(acc, q_base, K_T, LSE2_BASE, ROWS, rb, offs_n, offs_d, d_mask, w,
                       stride_qm, seqlen_q, seqlen_k, qk_scale,
                       BLOCK_S: tl.constexpr, DOT_PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """Add row block ``rb``'s probabilities on the key tile (``K_T``: (BLOCK_D, BLOCK_N)) into
    the (BLOCK_S, BLOCK_N) accumulator. Unmasked blocks are those whose every real row sees the
    whole tile left of its window. Padding slots and left-out rows (non-finite statistics) have
    lse2 = +inf and a zero query tile, so they add exp2(0 - inf) = 0 (a NaN that a non-finite
    key makes of them is cleared by the caller)."""
    slots = rb * BLOCK_S + tl.arange(0, BLOCK_S)
    rows = tl.load(ROWS + slots)
    lse2 = tl.load(LSE2_BASE + slots)
    r_mask = (rows >= 0) & (lse2 < float("inf"))
    q = tl.load(q_base + rows[:, None].to(tl.int64) * stride_qm + offs_d[None, :],
                mask=r_mask[:, None] & d_mask[None, :], other=0.0)
    s = tl.dot(q, K_T, input_precision=DOT_PRECISION)
    p = tl.exp2(s * qk_scale - lse2[:, None])  # one fused multiply-add per score
    if MASKED:
        pos = seqlen_k - seqlen_q + rows
        # Only mass outside the row's window counts: j <= p - w (this is also causal).
        keep = r_mask[:, None] & (offs_n[None, :] < seqlen_k) & (offs_n[None, :] <= pos[:, None] - w)
        p = tl.where(keep, p, 0.0)
    return acc + p


@triton.jit(do_not_specialize=LENGTH_ARGS + ["stride_sb", "stride_sh", "stride_ss"])
def column_scores_kernel(
    Q, K, ROWS, WINDOW, LSE2, SEG_BLOCKS, FIRST_BLOCK, FREE_BLOCK, SCORES,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_lb, stride_lh,
    stride_sb, stride_sh, stride_ss,
    nheads_sel, seqlen_q, seqlen_k, qk_scale, q_per_kv, q_per_sel,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (cdiv(Sk, BLOCK_N), B * Hsel, n_seg). Writes SCORES (B, Hsel, n_seg, Sk) fp32.

    SEG_BLOCKS (n_seg + 1,) int32: row blocks of segment s are [SEG_BLOCKS[s], SEG_BLOCKS[s+1]).
    FIRST_BLOCK (n_key_tiles,) int32: the first row block that can see this key tile outside
    its window (row blocks before it contribute nothing, so they are skipped).
    FREE_BLOCK (n_key_tiles,) int32: the first row block from which every real row sees the
    whole tile outside even the widest window: from there on no mask is needed.

    The probabilities are summed into a (BLOCK_S, BLOCK_N) accumulator, reduced over rows once
    at the end: a reduction over rows in every iteration would cross warps each time.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    seg = tl.program_id(2)
    b = (pid_bh // nheads_sel).to(tl.int64)
    sel_h = pid_bh % nheads_sel
    kv_h = ((sel_h * q_per_sel) // q_per_kv).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < seqlen_k
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    k = tl.load(K + b * stride_kb + kv_h * stride_kh + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    k_t = tl.trans(k)

    seg_lo = tl.load(SEG_BLOCKS + seg)
    rb_hi = tl.load(SEG_BLOCKS + seg + 1)
    rb_lo = tl.minimum(tl.maximum(seg_lo, tl.load(FIRST_BLOCK + pid_n)), rb_hi)
    rb_free = tl.minimum(tl.maximum(rb_lo, tl.load(FREE_BLOCK + pid_n)), rb_hi)
    acc = tl.zeros([BLOCK_S, BLOCK_N], dtype=tl.float32)
    for t in range(0, q_per_sel):
        h = sel_h * q_per_sel + t
        h64 = h.to(tl.int64)
        w = tl.load(WINDOW + h)
        q_base = Q + b * stride_qb + h64 * stride_qh
        lse_base = LSE2 + b * stride_lb + h64 * stride_lh
        for rb in range(rb_lo, rb_free):
            acc = _column_score_tile(acc, q_base, k_t, lse_base, ROWS, rb, offs_n, offs_d, d_mask, w,
                                     stride_qm, seqlen_q, seqlen_k, qk_scale,
                                     BLOCK_S=BLOCK_S, DOT_PRECISION=DOT_PRECISION, MASKED=True)
        for rb in range(rb_free, rb_hi):
            acc = _column_score_tile(acc, q_base, k_t, lse_base, ROWS, rb, offs_n, offs_d, d_mask, w,
                                     stride_qm, seqlen_q, seqlen_k, qk_scale,
                                     BLOCK_S=BLOCK_S, DOT_PRECISION=DOT_PRECISION, MASKED=False)
    score = tl.sum(acc, 0)
    # A NaN here comes only from a zero query tile (padding, or a left-out row) against a
    # non-finite key; every usable row that sees that key was left out, so its score is 0.
    score = tl.where(score == score, score, 0.0)
    tl.store(SCORES + b * stride_sb + sel_h.to(tl.int64) * stride_sh + seg * stride_ss + offs_n,
             score, mask=n_mask)


@triton.jit(do_not_specialize=LENGTH_ARGS)
def stripe_mass_kernel(
    Q, K, ROWS, WINDOW, LSE2, BLOCK_SEG, COL_IDX, COL_COUNT, STRIPE,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_lb, stride_lh,
    stride_cb, stride_ch, stride_cs,
    stride_nb, stride_nh,
    nheads_q, seqlen_q, seqlen_k, qk_scale, q_per_kv, q_per_sel,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (n_row_blocks, B * Hq). Writes STRIPE (B, Hq, n_rows_padded) fp32: per sampled row,
    the softmax mass of the selected columns left of its window. BLOCK_SEG (n_row_blocks,)
    int32 gives each row block's segment; COL_COUNT is (B, Hsel, n_seg) int32."""
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // nheads_q).to(tl.int64)
    h = pid_bh % nheads_q
    h64 = h.to(tl.int64)
    kv_h = (h // q_per_kv).to(tl.int64)
    sel_h = (h // q_per_sel).to(tl.int64)

    _, slots, rows, r_mask, pos, w, offs_d, d_mask, q = _sampled_rows_tile(
        Q, ROWS, WINDOW, pid_r, b, h, stride_qb, stride_qm, stride_qh, seqlen_q, seqlen_k,
        HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_S=BLOCK_S, GROUP=1)
    lse2 = tl.load(LSE2 + b * stride_lb + h64 * stride_lh + slots)
    seg = tl.load(BLOCK_SEG + pid_r)
    n_cols = tl.load(COL_COUNT + b * stride_nb + sel_h * stride_nh + seg)
    col_base = COL_IDX + b * stride_cb + sel_h * stride_ch + seg * stride_cs
    k_base = K + b * stride_kb + kv_h * stride_kh

    mass = tl.zeros([BLOCK_S], dtype=tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        offs_c = c0 + tl.arange(0, BLOCK_N)
        c_mask = offs_c < n_cols
        cols = tl.load(col_base + offs_c, mask=c_mask, other=0)
        k = tl.load(k_base + cols[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                    mask=c_mask[:, None] & d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        keep = (r_mask & (lse2 < float("inf")))[:, None] & c_mask[None, :] & (cols[None, :] <= (pos - w)[:, None])
        mass += tl.sum(tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0), 1)
    tl.store(STRIPE + b * stride_lb + h64 * stride_lh + slots, mass)
