"""SampleAttention: adaptive structured sparse attention for long-context prefill.

Public API (attributes load lazily through ``lazy_loader``, so ``import sampleattn`` stays light and never imports
ray, optuna, sqlalchemy or transformers)::

    from sampleattn import SampleAttentionConfig, plan, sparse_attention, sample_attention
    out = sample_attention(q, k, v, SampleAttentionConfig(alpha=0.95))

Tensors use the flash-attn layout: q (batch, seqlen_q, nheads_q, headdim),
k and v (batch, seqlen_k, nheads_kv, headdim), bottom-right causal alignment.
"""

from __future__ import annotations

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, _names = lazy_loader.attach(__name__, submod_attrs={
    "config": ["SampleAttentionConfig", "ModelAttentionProfile", "LayerOverride", "HeadOverride"],
    "geometry": ["Geometry"],
    "planning": ["SparsePlan", "plan"],
    "attention": ["sparse_attention", "sample_attention", "dense_attention"],
    "ops": ["sample_attention_op"],
    "operator": ["SampleAttention"],
    "lengths": ["parse_length", "format_length"],
    "env": ["collect_env"],
})
__all__ = [*_names, "__version__"]
