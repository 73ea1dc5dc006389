"""``@triton.jit`` pieces of FlashAttention's online softmax, shared by stage 3
(`_sparse_attention_jit`) and the peers' kernels (`sampleattn.bench.peers`).

Everything is in the log2 domain: scores are multiplied by ``scale * log2(e)`` and exponentiated
with ``exp2``; the running state of BLOCK_M query rows is the max ``m_i`` (BLOCK_M,), the sum
``l_i`` (BLOCK_M,) and the fp32 accumulator ``acc`` (BLOCK_M, BLOCK_D).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(acc, m_i, l_i, s, v, qk_scale, DOT_PRECISION: tl.constexpr, LSE_ONLY: tl.constexpr):
    """Fold one tile of raw scores ``s = q.k`` (BLOCK_M, BLOCK_N) and values ``v`` (BLOCK_N, D).

    The log2-domain scale is applied in one fused multiply-add with the running max
    (``s * scale - m``; the scale is positive, so the scaled max is the max of the scaled
    scores), and the P.V product accumulates into the rescaled accumulator inside the matrix
    instruction instead of being added afterwards.

    Masked entries of ``s`` are -inf. A row whose running max is still -inf (nothing visible
    yet) uses 0 as its reference, so ``exp2(-inf - -inf)`` (NaN) never happens. With
    ``LSE_ONLY`` only the running max and sum are kept (``v`` and ``acc`` are not touched).
    """
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.exp2(m_i - m_ref)
    p = tl.exp2(s * qk_scale - m_ref[:, None])
    l_i = l_i * rescale + tl.sum(p, 1)
    if not LSE_ONLY:
        acc = tl.dot(p.to(v.dtype), v, acc * rescale[:, None], input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def start_query_block(Q, K, V, b, h64, kv_h, stride_qb, stride_qm, stride_qh, stride_kb, stride_kh, stride_vb,
                      stride_vh, offs_m, m_mask, offs_d, d_mask, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The query tile of rows ``offs_m`` of (batch ``b``, query head ``h64``) of Q (B, Sq, Hq, D)
    (rows past the end and dims past D read as 0), the bases of K and V (B, Sk, Hkv, D) at KV
    head ``kv_h``, and the empty softmax state: ``(q, k_base, v_base, m_i, l_i, acc)``."""
    q = tl.load(Q + b * stride_qb + h64 * stride_qh + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = K + b * stride_kb + kv_h * stride_kh
    v_base = V + b * stride_vb + kv_h * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    return q, k_base, v_base, m_i, l_i, acc
