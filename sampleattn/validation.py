"""Checks of user input, each failing with a `ValueError` that says what to fix."""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .config import SUPPORTED_HEAD_DIMS

__all__ = [
    "check_head_overrides", "check_inference_only", "check_kernel_head_dim", "check_qk", "check_qkv",
    "default_scale", "kernel_backend_available",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_rank(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(
            f"{name} has {t.dim()} dims (shape {tuple(t.shape)}); expected 4: "
            "(batch, seqlen, nheads, headdim), the flash-attn layout"
        )


def check_qk(q: torch.Tensor, k: torch.Tensor, *, causal: bool = True) -> None:
    """Validate q (B, Sq, Hq, D) against k (B, Sk, Hkv, D)."""
    _check_rank("q", q)
    _check_rank("k", k)
    if not causal:
        raise ValueError(
            "causal=False is not supported: SampleAttention sparsifies causal prefill; "
            "use dense attention (sampleattn.dense_attention) for bidirectional layers"
        )
    if q.device != k.device:
        raise ValueError(f"q is on {q.device} but k is on {k.device}; move them to one device")
    if q.dtype != k.dtype:
        raise ValueError(f"q is {q.dtype} but k is {k.dtype}; cast them to one dtype")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use float16, bfloat16 or float32")
    batch, seqlen_q, nheads_q, head_dim = q.shape
    kb, seqlen_k, nheads_kv, kd = k.shape
    if kb != batch:
        raise ValueError(f"q has batch {batch} but k has batch {kb}")
    if kd != head_dim:
        raise ValueError(f"q has head dim {head_dim} but k has head dim {kd}")
    if seqlen_q == 0 or seqlen_k == 0 or batch == 0:
        raise ValueError(
            f"empty input: batch={batch}, seqlen_q={seqlen_q}, seqlen_k={seqlen_k}; "
            "every one must be at least 1"
        )
    if seqlen_q > seqlen_k:
        raise ValueError(
            f"seqlen_q={seqlen_q} > seqlen_k={seqlen_k}: queries must be the last seqlen_q "
            "positions of the keys (bottom-right causal alignment); pass the whole key cache"
        )
    if nheads_kv == 0 or nheads_q % nheads_kv:
        raise ValueError(
            f"nheads_q={nheads_q} is not a multiple of nheads_kv={nheads_kv}; GQA needs each KV "
            "head shared by the same number of query heads"
        )
    for name, t in (("q", q), ("k", k)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (headdim); call .contiguous()")


def check_kernel_head_dim(head_dim: int) -> None:
    """Raise unless the Triton kernels are built for ``head_dim``: the one check that only the
    kernel path makes (dense attention and the plain-PyTorch backend take any head dim)."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        supported = ", ".join(str(d) for d in SUPPORTED_HEAD_DIMS)
        raise ValueError(
            f"head dim {head_dim} is not supported by the Triton kernels, which are built for head "
            f"dims {supported}; dense attention (sampleattn.dense_attention, or calls below "
            "dense_below) takes any head dim, and so does backend='torch' (small inputs only)"
        )


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True) -> None:
    """Validate q, k and v together; v must have k's shape, dtype and device."""
    check_qk(q, k, causal=causal)
    _check_rank("v", v)
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)} but k has {tuple(k.shape)}; they must match")
    if v.device != k.device or v.dtype != k.dtype:
        raise ValueError(f"v is {v.dtype} on {v.device} but k is {k.dtype} on {k.device}; they must match")
    if v.stride(-1) != 1:
        raise ValueError("v must be contiguous in its last dim (headdim); call .contiguous()")


def check_head_overrides(heads: Mapping[int, object] | None, nheads_q: int) -> None:
    """Raise if a head override (``heads``: query-head index -> override) names a query head
    that the call does not have; checked on every path, dense included, so that a wrong index
    fails at any length rather than only where the sparse path reads it."""
    for head in heads or ():
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < nheads_q:
            raise ValueError(f"a head override names head {head!r}, but the call has {nheads_q} query "
                             f"heads (indices 0..{nheads_q - 1})")


def check_inference_only(*tensors: torch.Tensor) -> None:
    """Raise if autograd would need a gradient through the sparse path.

    The sparse path (the plan and stage 3) has no backward: its output would come back
    detached, silently, while the dense path below ``dense_below`` gives gradients. So a sparse
    call with autograd on and an input that requires grad is refused instead.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ValueError(
            "the sparse path of SampleAttention is inference-only (it has no backward), but autograd "
            "is on and q, k or v requires grad: wrap the call in torch.no_grad() or "
            "torch.inference_mode() for inference (prefill), or use dense attention "
            "(sampleattn.dense_attention) where gradients are needed (training)"
        )


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    """The softmax scale: ``1 / sqrt(headdim)`` unless given (then it must be positive and finite)."""
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale={scale} must be a positive finite number")
    return float(scale)


def kernel_backend_available(t: torch.Tensor) -> None:
    """Raise unless the Triton kernels can run on ``t``'s device.

    On a CUDA device they run natively. On the CPU they run only under Triton's interpreter,
    which must be switched on (``TRITON_INTERPRET=1``) before `sampleattn.kernels` is imported.
    """
    if t.device.type == "cuda":
        return
    from sampleattn.kernels import _sparse_attention_jit

    if type(_sparse_attention_jit.sparse_attention_fwd_kernel).__name__ == "InterpretedFunction":
        return
    raise ValueError(
        f"tensors are on {t.device}: the Triton kernels run on a CUDA GPU, or on the CPU under "
        "Triton's interpreter (set TRITON_INTERPRET=1 before importing sampleattn); on the CPU "
        "the plain-PyTorch path is backend='torch'"
    )
