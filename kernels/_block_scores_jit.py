"""Triton code of the block rule's estimate: every query row against mean-pooled keys.

Only ``@triton.jit`` functions live here; `block_scores.py` launches them.

For query row i (absolute position ``p_i``) and key block c (keys ``[c * KB, (c + 1) * KB)``,
mean-pooled key ``kbar_c``), the row's estimated share of its mass on block c is the softmax
over its visible blocks of ``scale * q_i . kbar_c + ln(n_ic)``, with ``n_ic`` the block's keys
visible to the row (a block of n keys with the same logit holds n times one key's mass). One
program takes a block of BLOCK_M query rows and the GROUP query heads of one selection head:
a first pass gets each (row, head)'s log-sum-exp over the pooled keys (written to a scratch
buffer), a second sums the shares over the rows and heads, one tile of pooled keys at a time.
With ``POWER`` p > 1 it sums the shares' p-th powers: a block one row needs strongly then
outranks one that many rows need a little. No atomics: the sums are deterministic. With
``ROW_STRIDE`` s > 1 only every s-th row of the block is scored (the last row of each group of
s, which sees the group's keys), for 1 / s of the cost.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._specialization import LENGTH_ARGS


@triton.jit
def _pooled_logits(q, kbar_base, stride_pn, offs_c, pos, offs_d, d_mask, seqlen_k, qk_scale,
                   n_kblocks, KEY_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr, WHOLE: tl.constexpr):
    """Log2-domain logits (BLOCK_M, BLOCK_C) of the rows against pooled key blocks ``offs_c``,
    ``-inf`` where a block has no key visible to the row. With ``WHOLE`` the caller knows that
    every block of the tile is whole and wholly visible to every row: the count term is the
    constant ``log2(KEY_BLOCK)``, with no mask and no logarithm per entry (all tiles but the
    one or two at the diagonal)."""
    if WHOLE:
        kbar = tl.load(kbar_base + offs_c[:, None].to(tl.int64) * stride_pn + offs_d[None, :],
                       mask=d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(kbar), input_precision=DOT_PRECISION)
        return s * qk_scale + tl.log2(KEY_BLOCK * 1.0)
    c_mask = offs_c < n_kblocks
    kbar = tl.load(kbar_base + offs_c[:, None].to(tl.int64) * stride_pn + offs_d[None, :],
                   mask=c_mask[:, None] & d_mask[None, :], other=0.0)
    s = tl.dot(q, tl.trans(kbar), input_precision=DOT_PRECISION)
    first = offs_c * KEY_BLOCK
    size = tl.minimum(seqlen_k - first, KEY_BLOCK)
    visible = tl.minimum(pos[:, None] - first[None, :] + 1, size[None, :])
    keep = (visible > 0) & c_mask[None, :]
    return tl.where(keep, s * qk_scale + tl.log2(tl.maximum(visible, 1).to(tl.float32)), float("-inf"))


@triton.jit
def _lse_step(m_i, l_i, t):
    """Fold a tile of log2-domain logits ``t`` (BLOCK_M, BLOCK_C) into the running max and sum."""
    m_new = tl.maximum(m_i, tl.max(t, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    l_i = l_i * tl.exp2(m_i - m_ref) + tl.sum(tl.exp2(t - m_ref[:, None]), 1)
    return m_new, l_i


@triton.jit
def _share_tile(Q, KBAR, LSE, b, sel, c0, offs_m, m_mask, pos, offs_d, d_mask, seqlen_k, qk_scale, n_kblocks, q_per_kv,
                stride_qb, stride_qm, stride_qh, stride_pb, stride_pn, stride_ph, stride_lb, stride_lh,
                BLOCK_C: tl.constexpr, KEY_BLOCK: tl.constexpr, GROUP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                WHOLE: tl.constexpr, POWER: tl.constexpr):
    """(BLOCK_C,) the shares of pooled blocks ``c0 + arange(BLOCK_C)`` to the power POWER, summed
    over the rows and the GROUP heads (each row's log-sum-exp read back from LSE)."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for g in range(GROUP):
        h = (sel * GROUP + g).to(tl.int64)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        lse = tl.load(LSE + b * stride_lb + h * stride_lh + offs_m, mask=m_mask, other=float("inf"))
        kbar_base = KBAR + b * stride_pb + (h // q_per_kv) * stride_ph
        t = _pooled_logits(q, kbar_base, stride_pn, offs_c, pos, offs_d, d_mask, seqlen_k, qk_scale, n_kblocks,
                           KEY_BLOCK=KEY_BLOCK, DOT_PRECISION=DOT_PRECISION, WHOLE=WHOLE)
        acc += tl.sum(tl.exp2((t - lse[:, None]) * POWER), 0)  # share ** POWER, in the log2 domain
    return acc


@triton.jit(do_not_specialize=LENGTH_ARGS + ["n_kblocks", "stride_lb", "stride_lh", "stride_sb", "stride_sh",
                                               "stride_sq"])
def block_scores_kernel(
    Q, KBAR, LSE, SCORES,
    stride_qb, stride_qm, stride_qh,
    stride_pb, stride_pn, stride_ph,
    stride_lb, stride_lh,
    stride_sb, stride_sh, stride_sq,
    nheads_q, seqlen_q, seqlen_k, n_kblocks, qk_scale, q_per_kv,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    KEY_BLOCK: tl.constexpr, GROUP: tl.constexpr, DOT_PRECISION: tl.constexpr, ROW_STRIDE: tl.constexpr,
    POWER: tl.constexpr,
):
    """One program: query block ``program_id(0)`` of BLOCK_M rows, selection head ``program_id(1)``;
    it scores BLOCK_M // ROW_STRIDE of the rows.

    Shapes: Q (B, Sq, Hq, D); KBAR (B, n_kblocks, Hkv, D) mean-pooled keys; LSE (B, Hq, Sq) fp32
    scratch; SCORES (B, Hsel, n_qblocks, n_kblocks) fp32, entry (b, s, t, c) the summed share (to
    the power POWER) of block c over the rows of query block t and the GROUP query heads of
    selection head s.
    """
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    tl.static_assert(BLOCK_M // ROW_STRIDE >= 16)
    pid_m = tl.program_id(0)
    pid_bs = tl.program_id(1)
    n_sel = nheads_q // GROUP
    b = (pid_bs // n_sel).to(tl.int64)
    sel = pid_bs % n_sel
    group_first = pid_m * BLOCK_M + tl.arange(0, BLOCK_M // ROW_STRIDE) * ROW_STRIDE
    m_mask = group_first < seqlen_q
    # each group's last row (the last query row for a group the sequence cuts short)
    offs_m = tl.minimum(group_first + ROW_STRIDE - 1, seqlen_q - 1)
    pos = seqlen_k - seqlen_q + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    last_pos = seqlen_k - seqlen_q + tl.minimum(pid_m * BLOCK_M + BLOCK_M, seqlen_q) - 1
    n_visible = tl.minimum(last_pos // KEY_BLOCK + 1, n_kblocks)
    # Tiles [0, n_whole) hold whole blocks that every row of the block sees entirely.
    first_pos = seqlen_k - seqlen_q + pid_m * BLOCK_M
    n_whole = (tl.minimum((first_pos + 1) // KEY_BLOCK, seqlen_k // KEY_BLOCK) // BLOCK_C) * BLOCK_C

    # Pass 1: each (row, head)'s log-sum-exp over its visible pooled blocks.
    for g in range(GROUP):
        h = (sel * GROUP + g).to(tl.int64)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        kbar_base = KBAR + b * stride_pb + (h // q_per_kv) * stride_ph
        m_i = tl.full([BLOCK_M // ROW_STRIDE], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M // ROW_STRIDE], dtype=tl.float32)
        for c0 in range(0, n_whole, BLOCK_C):
            t = _pooled_logits(q, kbar_base, stride_pn, c0 + tl.arange(0, BLOCK_C), pos, offs_d, d_mask, seqlen_k,
                               qk_scale, n_kblocks, KEY_BLOCK=KEY_BLOCK, DOT_PRECISION=DOT_PRECISION, WHOLE=True)
            m_i, l_i = _lse_step(m_i, l_i, t)
        for c0 in range(n_whole, n_visible, BLOCK_C):
            t = _pooled_logits(q, kbar_base, stride_pn, c0 + tl.arange(0, BLOCK_C), pos, offs_d, d_mask, seqlen_k,
                               qk_scale, n_kblocks, KEY_BLOCK=KEY_BLOCK, DOT_PRECISION=DOT_PRECISION, WHOLE=False)
            m_i, l_i = _lse_step(m_i, l_i, t)
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("inf"))
        tl.store(LSE + b * stride_lb + h * stride_lh + offs_m, lse, mask=m_mask)
    tl.debug_barrier()  # pass 2 reads rows of LSE that other threads of this program wrote

    # Pass 2: per tile of pooled blocks, the shares summed over the rows and the heads.
    score_base = SCORES + b * stride_sb + sel.to(tl.int64) * stride_sh + pid_m * stride_sq
    for c0 in range(0, n_whole, BLOCK_C):
        acc = _share_tile(Q, KBAR, LSE, b, sel, c0, offs_m, m_mask, pos, offs_d, d_mask, seqlen_k, qk_scale,
                          n_kblocks, q_per_kv, stride_qb, stride_qm, stride_qh, stride_pb, stride_pn, stride_ph,
                          stride_lb, stride_lh, BLOCK_C=BLOCK_C, KEY_BLOCK=KEY_BLOCK, GROUP=GROUP,
                          DOT_PRECISION=DOT_PRECISION, WHOLE=True, POWER=POWER)
        tl.store(score_base + c0 + tl.arange(0, BLOCK_C), acc)
    for c0 in range(n_whole, n_visible, BLOCK_C):
        acc = _share_tile(Q, KBAR, LSE, b, sel, c0, offs_m, m_mask, pos, offs_d, d_mask, seqlen_k, qk_scale,
                          n_kblocks, q_per_kv, stride_qb, stride_qm, stride_qh, stride_pb, stride_pn, stride_ph,
                          stride_lb, stride_lh, BLOCK_C=BLOCK_C, KEY_BLOCK=KEY_BLOCK, GROUP=GROUP,
                          DOT_PRECISION=DOT_PRECISION, WHOLE=False, POWER=POWER)
        offs_c = c0 + tl.arange(0, BLOCK_C)
        tl.store(score_base + offs_c, acc, mask=offs_c < n_kblocks)
    # Blocks no row of this query block sees score 0.
    for c0 in range((n_visible // BLOCK_C) * BLOCK_C, n_kblocks, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        tl.store(score_base + offs_c, tl.zeros([BLOCK_C], dtype=tl.float32),
                 mask=(offs_c >= n_visible) & (offs_c < n_kblocks))
