"""SampleAttention: adaptive structured sparse attention for long-context prefill.

Public API (attributes load lazily, so ``import sampleattn`` stays light and never imports
ray, optuna, sqlalchemy or transformers)::

    from sampleattn import SampleAttentionConfig, plan, sparse_attention, sample_attention
    out = sample_attention(q, k, v, SampleAttentionConfig(alpha=0.95))

Tensors use the flash-attn layout: q (batch, seqlen_q, nheads_q, headdim),
k and v (batch, seqlen_k, nheads_kv, headdim), bottom-right causal alignment.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SampleAttentionConfig": "sampleattn.config",
    "ModelAttentionProfile": "sampleattn.config",
    "LayerOverride": "sampleattn.config",
    "HeadOverride": "sampleattn.config",
    "SparsePlan": "sampleattn.planning",
    "plan": "sampleattn.planning",
    "sparse_attention": "sampleattn.attention",
    "sample_attention": "sampleattn.attention",
    "dense_attention": "sampleattn.attention",
    "sample_attention_op": "sampleattn.ops",
    "SampleAttention": "sampleattn.operator",
    "parse_length": "sampleattn.lengths",
    "format_length": "sampleattn.lengths",
    "collect_env": "sampleattn.env",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sampleattn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
