"""Stage 3 and the whole operator: `sparse_attention`, `sample_attention`, `dense_attention`.

Backends: ``"triton"`` (the kernels; on the CPU only under ``TRITON_INTERPRET=1``), ``"torch"``
(the plain-PyTorch reference: exact, O(seqlen^2) memory, for small inputs on the CPU), and
``"auto"``: Triton on a GPU or under the interpreter, else torch.
"""

from __future__ import annotations

import contextlib
from typing import Literal, Mapping

import torch
import torch.nn.functional as F

from sampleattn.kernels.tiles import BLOCK_N, operator_block_m

from .config import HeadOverride, SampleAttentionConfig
from .dense_heads import dense_kv_heads, query_heads_of, without_kv_heads
from .planning import SparsePlan, plan
from .selection import static_kmax as static_kmax_scope
from .validation import (
    check_head_overrides, check_inference_only, check_kernel_head_dim, check_qkv, default_scale,
    kernel_backend_available,
)

__all__ = ["Backend", "dense_attention", "resolve_backend", "sample_attention", "sparse_attention"]

Backend = Literal["auto", "triton", "torch"]


def resolve_backend(t: torch.Tensor, backend: Backend) -> Literal["triton", "torch"]:
    """Pick the backend for tensors on ``t``'s device (see the module docstring)."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend={backend!r}; choose 'auto', 'triton' or 'torch'")
    if backend == "torch":
        return "torch"
    if backend == "triton":
        kernel_backend_available(t)
        return "triton"
    try:
        kernel_backend_available(t)
        return "triton"
    except ValueError:
        return "torch"


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: SparsePlan,
    *,
    return_lse: bool = False,
    block_m: int | None = None,
    block_n: int = BLOCK_N,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Stage 3: attention over the plan's window band plus its selected columns.

    Args:
        q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D); the shapes the plan was made for.
        return_lse: also return the per-row natural log-sum-exp (B, Hq, Sq) fp32, e.g. to merge
            chunks in chunked prefill (-inf for a row that kept no key).
        block_m, block_n: kernel tile sizes (keyword-only); block_m must divide
            plan.segment_rows; None takes the largest of 128, 64, 32, 16 that does
            (`kernels.tiles.operator_block_m`).
    Returns:
        out (B, Sq, Hq, D) in q's dtype (and lse).
    Raises:
        ValueError: also when autograd is on and an input requires grad (inference only).
    """
    check_qkv(q, k, v)
    check_inference_only(q, k, v)
    expected = (plan.batch, plan.seqlen_q, plan.nheads_q)
    got = (q.shape[0], q.shape[1], q.shape[2])
    if got != expected or (k.shape[1], k.shape[2]) != (plan.seqlen_k, plan.nheads_kv):
        raise ValueError(
            f"the plan was made for (batch, seqlen_q, nheads_q)={expected}, seqlen_k={plan.seqlen_k}, "
            f"nheads_kv={plan.nheads_kv}; got q {tuple(q.shape)} and k {tuple(k.shape)}: plan again"
        )
    if plan.col_idx.device != q.device:
        raise ValueError(f"the plan is on {plan.col_idx.device} but q is on {q.device}")
    return _stage3(q, k, v, plan, return_lse=return_lse, block_m=block_m, block_n=block_n,
                   backend=resolve_backend(q, backend))


def _stage3(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: SparsePlan, *, return_lse: bool,
    block_m: int | None, block_n: int, backend: Literal["triton", "torch"],
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`sparse_attention` on inputs already checked against each other and the plan (by
    `sparse_attention`, or by `sample_attention`, which made the plan for them)."""
    if backend == "torch":
        from .reference import attention_ref

        # `sparse_attention_ref` without its input check: dense attention under the plan's mask
        return attention_ref(q, k, v, scale=plan.scale, mask=plan.to_dense(), return_lse=return_lse)
    from sampleattn.kernels import sparse_attention_fwd

    check_kernel_head_dim(q.shape[-1])
    if block_m is None:
        block_m = operator_block_m(plan.segment_rows)
    blocks = {}
    if plan.blocks is not None:
        blocks = {"blk_idx": plan.blocks.blk_idx, "block_rows": plan.blocks.block_rows,
                  "key_block": plan.blocks.key_block, "has_columns": plan.blocks.has_columns}
    out, lse = sparse_attention_fwd(
        q, k, v, plan.col_idx, plan.window, segment_rows=plan.segment_rows,
        q_per_sel=plan.q_per_sel, scale=plan.scale, block_m=block_m, block_n=block_n,
        return_lse=return_lse, **blocks,
    )
    return (out, lse) if return_lse else out


def _dense_heads_into(
    out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_heads: list[int], *,
    causal: bool, scale: float,
) -> None:
    """Overwrite the query heads of ``kv_heads`` in ``out`` (B, Sq, Hq, D) with dense attention."""
    q_index = torch.tensor(query_heads_of(kv_heads, q.shape[2], k.shape[2]), device=q.device)
    kv_index = torch.tensor(kv_heads, device=q.device)
    out[:, :, q_index] = _dense(q.index_select(2, q_index), k.index_select(2, kv_index),
                                v.index_select(2, kv_index), causal=causal, scale=scale)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention through PyTorch SDPA (cuDNN/flash/memory-efficient/math, as PyTorch picks).

    q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D); bottom-right causal alignment when Sq < Sk.
    Returns (B, Sq, Hq, D).
    """
    check_qkv(q, k, v, causal=True)
    return _dense(q, k, v, causal=causal, scale=default_scale(q, scale))


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float) -> torch.Tensor:
    """`dense_attention` on checked inputs, with the scale resolved."""
    seqlen_q, nheads_q = q.shape[1], q.shape[2]
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if nheads_kv != nheads_q:
        # Expanding KV is portable across SDPA backends and torch versions (enable_gqa is not
        # accepted by every backend together with a bias).
        kh = kh.repeat_interleave(nheads_q // nheads_kv, dim=1)
        vh = vh.repeat_interleave(nheads_q // nheads_kv, dim=1)
    if not causal:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    elif seqlen_q == seqlen_k:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:
        from torch.nn.attention.bias import causal_lower_right

        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=causal_lower_right(seqlen_q, seqlen_k),
                                             scale=scale)
    return out.transpose(1, 2)


def sample_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: SampleAttentionConfig | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
    return_plan: bool = False,
    return_lse: bool = False,
    heads: Mapping[int, HeadOverride] | None = None,
    backend: Backend = "auto",
    static_kmax: bool = False,
):
    """SampleAttention: plan (stages 1-2) then sparse attention (stage 3).

    Dense attention runs instead below ``config.dense_below`` keys and for a config that keeps
    every key (`SampleAttentionConfig.keeps_everything`); the plan returned is then None (with
    ``return_lse`` the dense path runs the kernel with a full window, still exact). Without
    ``return_lse``, the KV heads whose planned density is above ``config.dense_above`` run dense
    attention and the others stage 3 (`sampleattn.dense_heads`); the plan returned is the one
    made, with every head's planned density.
    Only the dense attention path (PyTorch SDPA) gives gradients: a call that runs the kernels
    while autograd is on and an input requires grad raises `ValueError` (wrap inference in
    ``torch.no_grad()`` or ``torch.inference_mode()``).

    Args:
        q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D), Sq <= Sk.
        config: hyperparameters (default `SampleAttentionConfig()`).
        heads: per-query-head overrides of alpha and window_ratio.
        static_kmax: pad the plan's ``col_idx`` to ``seqlen_k`` columns (or the rule's smaller
            limit on them) instead of reading the largest count back from the device
            (`sampleattn.selection.static_kmax`): no host synchronisation, the same result. For CUDA-graph capture, warm up with it too.
    Returns:
        out (B, Sq, Hq, D); then lse (B, Hq, Sq) if ``return_lse``; then the plan if ``return_plan``.
    """
    config = config or SampleAttentionConfig()
    check_qkv(q, k, v, causal=causal)
    check_head_overrides(heads, q.shape[2])
    scale = default_scale(q, scale)
    chosen = resolve_backend(q, backend)
    # A config that keeps every key is dense attention (unless head overrides make heads sparse).
    dense = k.shape[1] < config.dense_below or (config.keeps_everything() and not heads)
    sparse_plan: SparsePlan | None = None
    # The inputs are checked once, above: the dense path and stage 3 below do not check again.
    if dense and not return_lse:
        out, lse = _dense(q, k, v, causal=causal, scale=scale), None
    else:
        check_inference_only(q, k, v)  # before planning: a refused call costs nothing
        # Dense through the kernel (for the lse): a full window, and the paper's rule (no passes).
        run_config = SampleAttentionConfig(alpha=1.0, window_ratio=1.0, block_m=config.block_m,
                                           block_n=config.block_n, dense_below=0) if dense else config
        with static_kmax_scope() if static_kmax else contextlib.nullcontext():
            if chosen == "torch":
                from .reference import plan_ref

                sparse_plan = plan_ref(q, k, run_config, scale=scale, heads=None if dense else heads,
                                       reports=return_plan)
            else:
                sparse_plan = plan(q, k, run_config, scale=scale, heads=None if dense else heads,
                                   reports=return_plan)
        # KV heads whose plan keeps so much that dense attention is faster (a host read)
        to_dense = dense_kv_heads(sparse_plan, config.dense_above) \
            if not dense and config.dense_above < 1.0 and not return_lse else []
        if len(to_dense) == k.shape[2]:
            out, lse = _dense(q, k, v, causal=causal, scale=scale), None
        else:
            out, lse = _stage3(q, k, v, without_kv_heads(sparse_plan, to_dense), return_lse=True,
                               block_m=config.block_m, block_n=config.block_n, backend=chosen)
            if to_dense:
                _dense_heads_into(out, q, k, v, to_dense, causal=causal, scale=scale)
        if dense:
            sparse_plan = None
    outputs: tuple = (out,)
    if return_lse:
        outputs += (lse,)
    if return_plan:
        outputs += (sparse_plan,)
    return outputs[0] if len(outputs) == 1 else outputs
