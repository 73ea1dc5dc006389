"""Triton code of the peers' sparse attention: ``@triton.jit`` functions only.

`kernels.py` validates, allocates and launches them; `reference.py` holds the PyTorch oracles.
Both kernels run FlashAttention's online softmax over a per-query-block list of key tiles, in the
log2 domain (scores times ``scale * log2(e)``, ``exp2``), fp32 accumulation, output in the input
dtype, bottom-right causal (query row ``i`` sits at position ``p_i = seqlen_k - seqlen_q + i``); the
softmax step and the query block's start are stage 3's (`sampleattn.kernels._softmax_jit`):

* `block_sparse_attention_kernel` (FlexPrefill): per query block a sorted list of key blocks.
* `vertical_slash_attention_kernel` (MInference): per query block the key ranges that its
  selected diagonals cover (contiguous tiles), then the selected columns outside those ranges
  (gathered).

The loops have no branches inside (Triton pipelines the loads of such loops only): the block
list is walked in two loops, the key blocks wholly before the program's rows without a mask,
then the rest with one; the diagonals' range tiles are all masked (range ends, key 0, causal).
"""

from __future__ import annotations

import triton
import triton.language as tl

from sampleattn.kernels._softmax_jit import online_softmax_step, start_query_block


@triton.jit
def _program_start(Q, K, V, stride_qb, stride_qm, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
                   nheads_q, seqlen_q, seqlen_k, q_per_kv, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    """Where a program starts: its BLOCK_M query rows (program id 0) of one (batch, query head)
    (program id 1), their positions ``pos`` and masks, the query tile, the K/V bases of the head's
    KV head, and the empty softmax state."""
    pid_bh = tl.program_id(1)
    b, h = (pid_bh // nheads_q).to(tl.int64), pid_bh % nheads_q
    h64, kv_h = h.to(tl.int64), (h // q_per_kv).to(tl.int64)
    row0 = tl.program_id(0) * BLOCK_M
    offs_m, offs_d = row0 + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    m_mask, d_mask = offs_m < seqlen_q, offs_d < HEAD_DIM
    q, k_base, v_base, m_i, l_i, acc = start_query_block(
        Q, K, V, b, h64, kv_h, stride_qb, stride_qm, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
        offs_m, m_mask, offs_d, d_mask, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D)
    pos = seqlen_k - seqlen_q + offs_m
    return b, h64, row0, offs_m, m_mask, offs_d, d_mask, pos, q, k_base, v_base, m_i, l_i, acc


@triton.jit
def _key_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, n0, lo, hi, pos, offs_d, d_mask, qk_scale,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Attend to the keys ``[n0, n0 + BLOCK_N)`` that lie in ``[lo, hi)`` and at or before each
    row's position ``pos``. ``MASKED=False``: the caller knows every key of the tile is kept."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    if MASKED:
        n_ok = (offs_n >= lo) & (offs_n < hi)
        kv_mask = n_ok[:, None] & d_mask[None, :]
    else:
        kv_mask = d_mask[None, :]
    k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        s = tl.where(n_ok[None, :] & (offs_n[None, :] <= pos[:, None]), s, float("-inf"))
    return online_softmax_step(acc, m_i, l_i, s, v, qk_scale, DOT_PRECISION, LSE_ONLY=False)


@triton.jit
def _store_output(O, stride_ob, stride_om, stride_oh, b, h64, offs_m, m_mask, offs_d, d_mask, acc, l_i):
    """Normalise and store; a row that kept no key outputs 0, never NaN."""
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_base = O + b * stride_ob + h64 * stride_oh
    tl.store(o_base + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=m_mask[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "stride_ib", "stride_ih", "stride_iq", "stride_cb", "stride_ch",
                               "stride_fb", "stride_fh"])
def block_sparse_attention_kernel(
    Q, K, V, O, KV_IDX, KV_COUNT, KV_FULL,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_ob, stride_om, stride_oh,
    stride_ib, stride_ih, stride_iq,
    stride_cb, stride_ch,
    stride_fb, stride_fh,
    nheads_q, seqlen_q, seqlen_k, qk_scale, q_per_kv,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, Q_BLOCK: tl.constexpr, KEY_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, query head).

    Shapes: Q, O (B, Sq, Hq, D); K, V (B, Sk, Hkv, D); KV_IDX (B, Hq, n_qblocks, max_blocks)
    int32, the key blocks (of KEY_BLOCK keys) of query block ``rows // Q_BLOCK``, ascending, the
    first KV_COUNT[b, h, qb] of them valid; KV_FULL (B, Hq, n_programs) int32: how many of those
    lie wholly at or before the program's first row (they need no mask). BLOCK_M divides Q_BLOCK
    and BLOCK_N divides KEY_BLOCK: a selection block is several tiles. Keys after a row's
    position are masked (causal).
    """
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    tl.static_assert(Q_BLOCK % BLOCK_M == 0)
    tl.static_assert(KEY_BLOCK % BLOCK_N == 0)
    pid_m = tl.program_id(0)
    b, h64, row0, offs_m, m_mask, offs_d, d_mask, pos, q, k_base, v_base, m_i, l_i, acc = _program_start(
        Q, K, V, stride_qb, stride_qm, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, nheads_q, seqlen_q,
        seqlen_k, q_per_kv, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_M=BLOCK_M)

    qb = row0 // Q_BLOCK
    idx_base = KV_IDX + b * stride_ib + h64 * stride_ih + qb * stride_iq
    count = tl.load(KV_COUNT + b * stride_cb + h64 * stride_ch + qb)
    n_full = tl.load(KV_FULL + b * stride_fb + h64 * stride_fh + pid_m)
    # Two loops without branches inside (so that Triton pipelines their loads): first the key
    # blocks that lie wholly at or before the program's first row (no mask), then the rest
    # (causal mask, sequence end).
    for e in range(0, n_full):
        kb = tl.load(idx_base + e)
        for t in tl.static_range(KEY_BLOCK // BLOCK_N):
            acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn,
                                      kb * KEY_BLOCK + t * BLOCK_N, 0, seqlen_k, pos, offs_d, d_mask, qk_scale,
                                      BLOCK_N=BLOCK_N, MASKED=False, DOT_PRECISION=DOT_PRECISION)
    for e in range(n_full, count):
        kb = tl.load(idx_base + e)
        for t in tl.static_range(KEY_BLOCK // BLOCK_N):
            acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn,
                                      kb * KEY_BLOCK + t * BLOCK_N, 0, seqlen_k, pos, offs_d, d_mask, qk_scale,
                                      BLOCK_N=BLOCK_N, MASKED=True, DOT_PRECISION=DOT_PRECISION)
    _store_output(O, stride_ob, stride_om, stride_oh, b, h64, offs_m, m_mask, offs_d, d_mask, acc, l_i)


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "stride_tb", "stride_th", "stride_fb", "stride_fh",
                               "stride_wb", "stride_wh", "stride_vcb", "stride_vch"])
def vertical_slash_attention_kernel(
    Q, K, V, O, TILE_OFF, TILE_LEN, TILE_COUNT, TILE_FIRST, COVER, COLS, COL_END,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_ob, stride_om, stride_oh,
    stride_tb, stride_th,
    stride_nb, stride_nh,
    stride_fb, stride_fh,
    stride_wb, stride_wh,
    stride_vcb, stride_vch,
    nheads_q, seqlen_q, seqlen_k, qk_scale, q_per_kv,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program: the BLOCK_M query rows of query block ``pid_m`` of one (batch, query head).

    With ``s`` the position of the block's first row, the selected diagonals cover the keys
    ``j`` whose distance ``s - j`` lies in the head's set ``D``, the union over its diagonal
    offsets ``delta`` of ``[delta - BLOCK_M + 1, delta]`` (every key that some row of the block
    sees at one of those offsets, as MInference's index conversion turns a diagonal into a key
    range per query block). ``D`` is the same for every block, so it is described once per head:

    * COVER (B, Hq, Sk + BLOCK_M) int8: ``COVER[d + BLOCK_M - 1]`` is 1 iff distance d is in D.
    * TILE_OFF, TILE_LEN (B, Hq, max_tiles) int32: D's runs cut into tiles of at most BLOCK_N
      keys, in ascending key order; tile t holds the keys ``[s - TILE_OFF[t], s - TILE_OFF[t] +
      TILE_LEN[t])``; TILE_COUNT (B, Hq) int32 of them are valid. TILE_FIRST (B, Hq, n_mblocks)
      int32: the block's first tile not wholly before key 0.
    * COLS (B, Hq, n_cols) int32 ascending, the selected columns; COL_END (B, Hq, n_mblocks)
      int32 (the strides of TILE_FIRST): how many of them lie at or before the block's last
      row's position. A column that a range of the block covers is left to the range: each key
      is counted once.
    """
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    pid_m = tl.program_id(0)
    b, h64, row0, offs_m, m_mask, offs_d, d_mask, pos, q, k_base, v_base, m_i, l_i, acc = _program_start(
        Q, K, V, stride_qb, stride_qm, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, nheads_q, seqlen_q,
        seqlen_k, q_per_kv, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_M=BLOCK_M)
    first_pos = seqlen_k - seqlen_q + row0

    # (a) the diagonals' key ranges, one tile at a time. Every tile is masked (its range ends, key
    # 0, the causal edge): a branch inside the loop would keep Triton from pipelining its loads.
    tile_base = b * stride_tb + h64 * stride_th
    first = tl.load(TILE_FIRST + b * stride_fb + h64 * stride_fh + pid_m)
    count = tl.load(TILE_COUNT + b * stride_nb + h64 * stride_nh)
    for t in range(first, count):
        n0 = first_pos - tl.load(TILE_OFF + tile_base + t)
        hi = n0 + tl.load(TILE_LEN + tile_base + t)
        acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, n0, tl.maximum(n0, 0),
                                  tl.minimum(hi, seqlen_k), pos, offs_d, d_mask, qk_scale, BLOCK_N=BLOCK_N,
                                  MASKED=True, DOT_PRECISION=DOT_PRECISION)

    # (b) the selected columns that no range of this block covers, gathered.
    col_base = COLS + b * stride_vcb + h64 * stride_vch
    cover_base = COVER + b * stride_wb + h64 * stride_wh + BLOCK_M - 1 + first_pos
    n_cols = tl.load(COL_END + b * stride_fb + h64 * stride_fh + pid_m)
    for c0 in range(0, n_cols, BLOCK_N):
        offs_c = c0 + tl.arange(0, BLOCK_N)
        c_ok = offs_c < n_cols
        cols = tl.load(col_base + offs_c, mask=c_ok, other=0)
        covered = tl.load(cover_base - cols, mask=c_ok, other=1)
        keep = c_ok & (covered == 0)
        cols64 = cols.to(tl.int64)
        kv_mask = keep[:, None] & d_mask[None, :]
        k = tl.load(k_base + cols64[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols64[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s = tl.where(keep[None, :] & (cols[None, :] <= pos[:, None]), s, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, qk_scale, DOT_PRECISION, LSE_ONLY=False)

    _store_output(O, stride_ob, stride_om, stride_oh, b, h64, offs_m, m_mask, offs_d, d_mask, acc, l_i)
