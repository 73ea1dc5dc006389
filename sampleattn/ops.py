"""The operator as a PyTorch custom op, ``torch.ops.sampleattn.sample_attention``, for
`torch.compile` (``fullgraph=True``: no graph break) and CUDA graphs.

Importing this module registers the op (and its fake implementation, which gives compile its
output shape without running anything); ``import sampleattn`` does not import it until
`sample_attention_op` is first used, or `SampleAttention` is made with ``as_custom_op=True``.

The op's schema holds only tensors, numbers and strings, so the config travels as its JSON
(``SampleAttentionConfig.model_dump_json()``: every field, including ones added later) and the
per-head overrides as a JSON object ``{"head": {"alpha": ..., "window_ratio": ...}}``; both are
parsed once per distinct string. Under `torch.compile` these strings are constants of the graph
(a new config object compiles a new graph, as any Python constant would).

Example::

    from sampleattn import SampleAttentionConfig, sample_attention_op
    config = SampleAttentionConfig(alpha=0.95, dense_below=0)
    f = torch.compile(lambda q, k, v: sample_attention_op(q, k, v, config), fullgraph=True)

Forward only (prefill): the op has no backward. It returns the output alone (no lse, no plan).
"""

from __future__ import annotations

import functools
import json
import types
from typing import Mapping

import torch

from .attention import Backend, sample_attention
from .config import HeadOverride, SampleAttentionConfig

__all__ = ["op_arguments", "sample_attention_op"]


@torch.library.custom_op("sampleattn::sample_attention", mutates_args=())
def _sample_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config_json: str, heads_json: str,
    scale: float | None, backend: str, static_kmax: bool,
) -> torch.Tensor:
    """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) -> (B, Sq, Hq, D): `sample_attention`, causal."""
    config, heads = _parse(config_json, heads_json)
    out = sample_attention(q, k, v, config, scale=scale, heads=heads or None, backend=backend,
                           static_kmax=static_kmax)
    # The kernels write into torch.empty_like(q), as the fake does; the dense path (SDPA) may
    # return other strides, and an op's real and fake outputs must agree.
    if k.shape[1] < config.dense_below:
        like = torch.empty_like(q)
        if out.stride() != like.stride():
            out = like.copy_(out)
    return out


@_sample_attention.register_fake
def _sample_attention_fake(q, k, v, config_json, heads_json, scale, backend, static_kmax):
    return torch.empty_like(q)


@functools.lru_cache(maxsize=256)
def _parse(config_json: str, heads_json: str) -> tuple[SampleAttentionConfig, Mapping[int, HeadOverride]]:
    config = SampleAttentionConfig.model_validate_json(config_json)
    heads = {int(h): HeadOverride.model_validate(o) for h, o in json.loads(heads_json or "{}").items()}
    return config, types.MappingProxyType(heads)  # cached: read-only


def op_arguments(
    config: SampleAttentionConfig, heads: Mapping[int, HeadOverride] | None = None,
) -> tuple[str, str]:
    """``(config_json, heads_json)``: how the op receives a config and its head overrides."""
    return _config_json(config), _heads_json(heads)


def _heads_json(heads: Mapping[int, HeadOverride] | None) -> str:
    return json.dumps({str(int(h)): o.model_dump(exclude_none=True) for h, o in sorted((heads or {}).items())})


@torch.compiler.assume_constant_result
def _config_json(config: SampleAttentionConfig) -> str:
    # Dynamo cannot trace pydantic's serializer: under torch.compile this runs while tracing and
    # its result is a constant of the graph, guarded on the config object (configs are frozen).
    if not isinstance(config, SampleAttentionConfig):
        raise ValueError(f"config must be a SampleAttentionConfig, got {type(config).__name__}")
    return config.model_dump_json()


def sample_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: SampleAttentionConfig | str | None = None,
    *,
    scale: float | None = None,
    heads: Mapping[int, HeadOverride] | str | None = None,
    backend: Backend = "auto",
    static_kmax: bool = False,
) -> torch.Tensor:
    """`sampleattn.sample_attention` (causal, output only) through the custom op.

    Args:
        q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D), Sq <= Sk, bottom-right causal alignment.
        config: hyperparameters (default `SampleAttentionConfig()`), or their JSON
            (``op_arguments(config)[0]``).
        heads: per-query-head overrides of alpha and window_ratio. Inside a function that
            torch.compile traces, pass them pre-serialized (``op_arguments(config, heads)[1]``),
            or use ``SampleAttention(profile, as_custom_op=True)``, which does that per layer.
        static_kmax: plans without a host synchronisation (see `sampleattn.selection.static_kmax`);
            use it for the warm-up and the capture of a CUDA graph.
    Returns:
        (B, Sq, Hq, D) in q's dtype.
    """
    if isinstance(config, str):
        config_json = config
    else:
        config_json = _config_json(_DEFAULT_CONFIG if config is None else config)
    if heads is None or isinstance(heads, str):
        heads_json = "{}" if heads is None else heads
    elif torch.compiler.is_compiling():
        raise ValueError(
            "under torch.compile, pass head overrides as op_arguments(config, heads)[1] (a JSON "
            "string), or use SampleAttention(profile, as_custom_op=True)"
        )
    else:
        heads_json = _heads_json(heads)
    return _sample_attention(q, k, v, config_json, heads_json, scale, backend, static_kmax)


_DEFAULT_CONFIG = SampleAttentionConfig()
