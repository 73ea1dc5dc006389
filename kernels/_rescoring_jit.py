"""Triton code of the rescoring selection's second pass: every ranking row's probability on
each candidate column.

Only ``@triton.jit`` functions live here; `rescoring.py` allocates and launches. The first
pass is the stage-3 kernel in ``LSE_ONLY`` mode: it gives each ranking row its log-sum-exp
over its window band and the candidate columns left of it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._specialization import LENGTH_ARGS


# LSE is stage 3's per-row log-sum-exp (B, Hq, Sq): its strides follow the length.
@triton.jit(do_not_specialize=LENGTH_ARGS + ["stride_lb", "stride_lh"])
def candidate_mass_kernel(
    Q, K, LSE, CAND, CAND_COUNT, WINDOW, SCORE,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_lb, stride_lh,
    stride_cb, stride_ch,
    stride_nb,
    stride_sb, stride_sh,
    nheads_sel, seqlen_q, seqlen_k, qk_scale,
    q_per_kv, q_per_sel, n_mblocks, m_stride, m_first,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program: BLOCK_C candidate columns of one (batch, selection head).

    For each query head of the selection group and each ranking query block (blocks
    ``t = m_first (mod m_stride)``), adds ``exp(s_ij - lse_i)`` over the rows ``i`` that see
    column ``j`` left of their window (``j <= p_i - w``). Columns are the program's; rows are
    looped over, so the sum over rows needs no atomics (deterministic).

    Shapes: Q (B, Sq, Hq, D); K (B, Sk, Hkv, D); LSE (B, Hq, Sq) fp32 natural log;
    CAND (B, Hsel, kmax) int32 ascending, padded with Sk; CAND_COUNT (B, Hsel) int32;
    WINDOW (Hq,) int32; SCORE (B, Hsel, kmax) fp32 output.
    """
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    pid_c = tl.program_id(0)
    pid_bs = tl.program_id(1)
    b = (pid_bs // nheads_sel).to(tl.int64)
    sel = pid_bs % nheads_sel
    sel64 = sel.to(tl.int64)
    kv_h = ((sel * q_per_sel) // q_per_kv).to(tl.int64)

    n_cand = tl.load(CAND_COUNT + b * stride_nb + sel64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < n_cand
    cand_base = CAND + b * stride_cb + sel64 * stride_ch
    cols = tl.load(cand_base + offs_c, mask=c_mask, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    k = tl.load(K + b * stride_kb + kv_h * stride_kh + cols[:, None].to(tl.int64) * stride_kn
                + offs_d[None, :], mask=c_mask[:, None] & d_mask[None, :], other=0.0)
    # Summed over rows once at the end: a per-tile sum over rows would reduce across warps on
    # every iteration.
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    offset = seqlen_k - seqlen_q
    first_col = tl.load(cand_base + pid_c * BLOCK_C, mask=pid_c * BLOCK_C < n_cand, other=seqlen_k)
    LOG2E: tl.constexpr = 1.4426950408889634

    for hh in range(0, q_per_sel):
        h = sel * q_per_sel + hh
        h64 = h.to(tl.int64)
        w = tl.load(WINDOW + h)
        # The first row that sees the tile's first column left of its window: p_i >= col + w.
        start_row = tl.maximum(first_col + w - offset, 0)
        t0 = start_row // BLOCK_M
        t0 = t0 + ((m_first - t0) % m_stride + m_stride) % m_stride  # next ranking block
        q_base = Q + b * stride_qb + h64 * stride_qh
        lse_base = LSE + b * stride_lb + h64 * stride_lh
        for t in range(t0, n_mblocks, m_stride):
            offs_m = t * BLOCK_M + tl.arange(0, BLOCK_M)
            m_mask = offs_m < seqlen_q
            q = tl.load(q_base + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :],
                        mask=m_mask[:, None] & d_mask[None, :], other=0.0)
            lse2 = tl.load(lse_base + offs_m, mask=m_mask, other=float("-inf")) * LOG2E
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            pos = offset + offs_m
            keep = (m_mask & (lse2 > float("-inf")))[:, None] & c_mask[None, :]
            keep = keep & (cols[None, :] <= pos[:, None] - w)
            lse_ref = tl.where(lse2 > float("-inf"), lse2, 0.0)
            acc += tl.where(keep, tl.exp2(s - lse_ref[:, None]), 0.0)

    tl.store(SCORE + b * stride_sb + sel64 * stride_sh + offs_c, tl.sum(acc, 0), mask=c_mask)
