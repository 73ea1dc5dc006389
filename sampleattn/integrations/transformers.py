"""SampleAttention as an attention implementation of Hugging Face transformers.

For models that route attention through ``transformers.AttentionInterface`` (Llama, Qwen2,
Mistral and their relatives; SmolLM2 among them). Two ways in::

    from sampleattn import SampleAttention, SampleAttentionConfig
    from sampleattn.integrations.transformers import patch_model, register

    # 1. patch a loaded model, for a block or until unpatched
    attn = SampleAttention(SampleAttentionConfig(alpha=0.95, dense_below=0))
    with patch_model(model, attn):
        out = model(input_ids)                 # prefill: SampleAttention per layer
        model.generate(input_ids, max_new_tokens=20)
    handle = patch_model(model, attn)         # plain call: stays patched ...
    handle.unpatch()                          # ... until restored

    # 2. by name at load time (the operator used is the one given to register(), by default
    #    SampleAttention() with its default config, dense below 16K keys)
    register(attn)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sample_attention")

What runs where, for each attention call of each layer (``module.layer_idx``):

* **prefill** (``seqlen_q >= dense_queries_below``, a plain causal mask): the operator,
  ``attn(q, k, v, layer=module.layer_idx, scale=module.scaling)`` with q (B, Sq, Hq, D) and
  k/v (B, Sk, Hkv, D) in the flash layout (transformers' (B, H, S, D) is transposed on the way in
  and the output comes back as (B, Sq, Hq, D), what transformers expects). The operator itself
  runs dense attention below its ``dense_below`` keys (short inputs).
* **chunked prefill** (a chunk of Sq queries after a KV cache of Sk - Sq keys): the same, with
  bottom-right causal alignment, which is what a DynamicCache gives.
* **decoding** (fewer than ``dense_queries_below`` queries, 16 by default): dense attention.
* **any mask that is not plain causal** (padding in a batch, a sliding window, a static cache
  whose slots past the current position are empty, packed sequences): dense SDPA with the mask
  transformers built, with one warning per kind of reason. The sparse path never runs under a
  mask it would ignore.

The causal mask is never silently dropped: the name ``"sample_attention"`` is registered with
``AttentionMaskInterface`` too. Its mask function returns None only when the mask is exactly
bottom-right causal over all keys (no padding, queries at the last positions, plain causal
pattern): the attention function then applies causality itself. Every other case gets the
materialised boolean mask of ``transformers.masking_utils.sdpa_mask`` and the dense path.

transformers is imported only when this module is.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

__all__ = [
    "IMPLEMENTATION",
    "AttentionRecord",
    "ModelPatch",
    "patch_model",
    "register",
    "sample_attention_forward",
    "sample_attention_mask",
    "set_default_operator",
]

#: Name of the attention implementation (and of its mask function) in transformers.
IMPLEMENTATION = "sample_attention"

#: Attribute set on each patched attention module: the `_LayerBinding` of its patch.
_BINDING_ATTR = "_sampleattn_binding"

#: Calls with fewer queries than this run dense attention by default (decoding, tiny chunks).
DEFAULT_DENSE_QUERIES_BELOW = 16


class AttentionOperator(Protocol):
    """What `patch_model` accepts: `sampleattn.SampleAttention`, or anything called the same way.

    ``op(q, k, v, *, layer, scale, return_plan=True)`` with q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D)
    returns ``(out (B, Sq, Hq, D), plan or None)``; with ``return_plan=False`` just ``out``. The
    evaluation's baselines (`sampleattn.baselines`) implement this too.
    """

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: int,
                 scale: float | None = None, return_plan: bool = False) -> Any: ...


@dataclass(frozen=True)
class AttentionRecord:
    """One attention call of a patched model (kept when ``patch_model(..., record=True)``).

    Attributes:
        layer: the layer index.
        path: ``"sparse"`` (the operator ran and returned a plan), ``"operator-dense"`` (the
            operator ran dense, e.g. below its ``dense_below``), ``"dense-decode"`` (too few
            queries) or ``"dense-mask"`` (a mask that is not plain causal).
        seqlen_q, seqlen_k: the call's lengths.
        density: mean computed / visible pairs over (batch, heads); 1.0 for every dense path.
        density_per_head: (B, Hq) fp32 on the CPU for the sparse path, else None.
    """

    layer: int
    path: str
    seqlen_q: int
    seqlen_k: int
    density: float
    density_per_head: torch.Tensor | None = None


@dataclass
class _LayerBinding:
    operator: Any
    dense_queries_below: int
    records: list[AttentionRecord] | None


_default_operator: Any = None
_registered = False
_lock = threading.Lock()
_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"sample_attention: {reason}; this call runs dense attention (exact)", stacklevel=3)


def set_default_operator(attn: Any) -> None:
    """The operator used by models loaded with ``attn_implementation="sample_attention"`` and
    not patched with `patch_model` (None: ``SampleAttention()`` with its default config)."""
    global _default_operator
    _default_operator = attn


def _operator_for(module: Any) -> _LayerBinding:
    binding = getattr(module, _BINDING_ATTR, None)
    if binding is not None:
        return binding
    global _default_operator
    if _default_operator is None:
        from sampleattn.operator import SampleAttention

        _default_operator = SampleAttention()
    return _LayerBinding(_default_operator, DEFAULT_DENSE_QUERIES_BELOW, None)


# --------------------------------------------------------------------------------------------
# The mask function
# --------------------------------------------------------------------------------------------


def sample_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: Any,
) -> torch.Tensor | None:
    """``AttentionMaskInterface`` function of ``"sample_attention"``.

    Returns None when the mask is exactly bottom-right causal over all ``kv_length`` keys: plain
    causal pattern, no local window, no padding in ``attention_mask`` (batch, >= kv_length), the
    keys start at position 0 and the queries are the last ``q_length`` positions. Otherwise the
    boolean mask (batch, 1, q_length, kv_length) of ``transformers.masking_utils.sdpa_mask``
    (never skipped), which makes the attention function run dense SDPA with it.
    """
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

    if mask_function is None:
        mask_function = causal_mask_function
    plain = (
        allow_is_causal_skip
        and mask_function is causal_mask_function
        and local_size is None
        and kv_offset == 0
        and not isinstance(q_offset, torch.Tensor)
        and q_offset + q_length == kv_length
        and not kwargs.get("use_vmap", False)
    )
    if plain and attention_mask is not None:
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)[:, :kv_length]
        plain = bool(padding.all())
    if plain:
        return None
    return sdpa_mask(
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
        kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
        local_size=local_size, allow_is_causal_skip=False, **kwargs,
    )


# --------------------------------------------------------------------------------------------
# The attention function
# --------------------------------------------------------------------------------------------


def sample_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function of ``"sample_attention"``.

    Args:
        module: the attention module (its ``layer_idx`` picks the layer's config).
        query: (B, Hq, Sq, D); key, value: (B, Hkv, Sk, D) (not repeated for GQA).
        attention_mask: None (bottom-right causal, see `sample_attention_mask`) or a boolean /
            additive mask (B, 1, Sq, Sk) for the dense path.
        scaling: softmax scale (``module.scaling``), default 1/sqrt(D).
    Returns:
        ``(output (B, Sq, Hq, D), None)``.
    """
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise ValueError(
            "sample_attention does not support attention softcapping or learned sinks; load this "
            "model with attn_implementation='sdpa' or 'eager'"
        )
    if dropout and module.training:
        raise ValueError("sample_attention is an inference implementation: dropout is not supported")
    binding = _operator_for(module)
    layer = int(getattr(module, "layer_idx", 0) or 0)
    seqlen_q, seqlen_k = query.shape[2], key.shape[2]
    if scaling is None:
        scaling = getattr(module, "scaling", None)
    if attention_mask is not None:
        _warn_once("the attention mask is not plain causal (padding, sliding window, static cache "
                   "or packed sequences)")
        out = _dense_masked(query, key, value, attention_mask, scaling)
        _record(binding, layer, "dense-mask", seqlen_q, seqlen_k, None)
        return out, None
    q = query.transpose(1, 2).contiguous()
    k = key.transpose(1, 2).contiguous()
    v = value.transpose(1, 2).contiguous()
    if seqlen_q < binding.dense_queries_below:
        from sampleattn.attention import dense_attention

        out = dense_attention(q, k, v, scale=scaling)
        _record(binding, layer, "dense-decode", seqlen_q, seqlen_k, None)
        return out.contiguous(), None
    # The plan (and its retained-mass reports) only when densities are recorded.
    result = binding.operator(q, k, v, layer=layer, scale=scaling, return_plan=binding.records is not None)
    out, plan = result if isinstance(result, tuple) else (result, None)
    _record(binding, layer, "sparse" if plan is not None else "operator-dense", seqlen_q, seqlen_k, plan)
    return out.contiguous(), None


def _dense_masked(query, key, value, mask, scaling):
    """Dense SDPA under transformers' mask: query (B, Hq, Sq, D) -> (B, Sq, Hq, D)."""
    group = query.shape[1] // key.shape[1]
    if group > 1:
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous()


def _record(binding: _LayerBinding, layer: int, path: str, seqlen_q: int, seqlen_k: int, plan) -> None:
    if binding.records is None:
        return
    if plan is None:
        binding.records.append(AttentionRecord(layer, path, seqlen_q, seqlen_k, 1.0))
        return
    per_head = plan.density.detach().float().cpu()
    binding.records.append(AttentionRecord(layer, path, seqlen_q, seqlen_k, float(per_head.mean()), per_head))


# --------------------------------------------------------------------------------------------
# Registration and patching
# --------------------------------------------------------------------------------------------


def register(attn: Any = None) -> None:
    """Register ``"sample_attention"`` with transformers' attention and mask interfaces.

    Idempotent. Afterwards ``from_pretrained(..., attn_implementation="sample_attention")`` and
    ``model.set_attn_implementation("sample_attention")`` work. ``attn`` (optional) becomes the
    default operator of models that are not patched with `patch_model`.
    """
    global _registered
    with _lock:
        if not _registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface

            AttentionInterface.register(IMPLEMENTATION, sample_attention_forward)
            AttentionMaskInterface.register(IMPLEMENTATION, sample_attention_mask)
            _registered = True
    if attn is not None:
        set_default_operator(attn)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose forward calls the attention interface: those with a ``layer_idx`` and
    q/k/v projections (or a ``num_key_value_groups``), one per decoder layer."""
    found = []
    for module in model.modules():
        if not hasattr(module, "layer_idx"):
            continue
        if hasattr(module, "q_proj") or hasattr(module, "num_key_value_groups"):
            found.append(module)
    return found


@dataclass
class ModelPatch:
    """The handle `patch_model` returns: a context manager, or call `unpatch()` to restore.

    Attributes:
        model: the patched model.
        operator: the attention operator the layers call.
        records: one `AttentionRecord` per attention call while patched, when ``record=True``
            (else an empty list); `densities()` summarises them.
    """

    model: Any
    operator: Any
    records: list[AttentionRecord] = field(default_factory=list)
    _previous: str | None = None
    _modules: list = field(default_factory=list)
    _active: bool = False

    def __enter__(self) -> "ModelPatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpatch()

    def unpatch(self) -> None:
        """Restore the model's previous attention implementation (idempotent)."""
        if not self._active:
            return
        for module in self._modules:
            if hasattr(module, _BINDING_ATTR):
                delattr(module, _BINDING_ATTR)
        if self._previous is not None and self._previous != IMPLEMENTATION:
            self.model.set_attn_implementation(self._previous)
        self._active = False

    def sparse_records(self) -> list[AttentionRecord]:
        """The records of calls that ran sparse."""
        return [r for r in self.records if r.path == "sparse"]

    def densities(self) -> dict[int, float]:
        """Mean density per layer over the recorded sparse calls (layer -> density)."""
        by_layer: dict[int, list[float]] = {}
        for r in self.sparse_records():
            by_layer.setdefault(r.layer, []).append(r.density)
        return {layer: sum(v) / len(v) for layer, v in sorted(by_layer.items())}

    def clear(self) -> None:
        """Forget the records so far."""
        self.records.clear()


def patch_model(
    model: Any,
    attn: Any,
    *,
    dense_queries_below: int = DEFAULT_DENSE_QUERIES_BELOW,
    record: bool = False,
) -> ModelPatch:
    """Make every attention layer of ``model`` run ``attn`` for prefill; see the module docs.

    Usable as a context manager (restores on exit) or as a plain call (``handle.unpatch()``).

    Args:
        model: a transformers model whose attention goes through ``AttentionInterface``.
        attn: a `sampleattn.SampleAttention` (or any operator called the same way, see
            `AttentionOperator`); layer ``i`` calls ``attn(q, k, v, layer=i, scale=...)``.
        dense_queries_below: calls with fewer queries (decoding) run dense attention.
        record: keep an `AttentionRecord` per call in ``handle.records`` (densities per layer).
    Returns:
        The `ModelPatch` handle.
    Raises:
        ValueError: the model does not route attention through the attention interface, or
            ``attn`` is not callable.
    """
    if not callable(attn):
        raise ValueError(f"attn must be a SampleAttention or a callable operator, got {type(attn).__name__}")
    if dense_queries_below < 1:
        raise ValueError(f"dense_queries_below={dense_queries_below} must be at least 1 (decoding is dense)")
    register()
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise ValueError(f"{type(model).__name__} is not a transformers PreTrainedModel")
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention modules with a layer_idx: it does not use "
            "transformers' AttentionInterface, so sample_attention cannot be plugged in"
        )
    previous = config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    if config._attn_implementation != IMPLEMENTATION:
        model.set_attn_implementation(previous)
        raise ValueError(
            f"{type(model).__name__} refused attn_implementation={IMPLEMENTATION!r}: it does not "
            "route attention through transformers.AttentionInterface"
        )
    handle = ModelPatch(model=model, operator=attn, _previous=previous, _modules=modules, _active=True)
    binding = _LayerBinding(attn, dense_queries_below, handle.records if record else None)
    for module in modules:
        setattr(module, _BINDING_ATTR, binding)
    return handle


@contextlib.contextmanager
def attention_implementation(model: Any, name: str):
    """Temporarily switch a model to another registered implementation (e.g. ``"sdpa"``)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
