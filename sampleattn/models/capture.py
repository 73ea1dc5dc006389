"""Capture of post-RoPE queries, keys and values during one real prefill of a model.

`capture_qkv(model, input_ids)` runs the model once and returns, per layer, the tensors that the
attention of that layer really consumed, in the flash-attn layout:

    q: (batch, seqlen, num_q_heads, head_dim)   after RoPE
    k: (batch, seqlen, num_kv_heads, head_dim)  after RoPE, one per KV head (not repeated for GQA)
    v: (batch, seqlen, num_kv_heads, head_dim)

plus the final logits. How the tensors are reached depends on the family (`catalog.CaptureSpec`):

* ``attention_interface`` (Llama, Qwen2, Mistral... in transformers): a function registered with
  ``transformers.AttentionInterface`` under the name ``"sampleattn_capture"`` receives
  ``(module, query, key, value, attention_mask, **kwargs)`` with ``(batch, heads, seqlen, dim)``
  tensors and ``module.layer_idx``; it records them and delegates to transformers' SDPA
  attention, so the model computes exactly what it computes with ``attn_implementation="sdpa"``.
  The SDPA mask function is registered under the same name with ``AttentionMaskInterface``:
  without it transformers builds no mask for an unknown implementation and the causal mask is
  silently dropped.
* ``patch_core_attention`` (remote-code ChatGLM2 and InternLM2): the attention modules named in
  the catalogue are patched for the duration of the call (see `_chatglm2_patch`,
  `_internlm2_patch`). Written from the models' published modeling code; untested on this
  machine, which cannot download their weights.

Capture assumes a prefill of unpadded sequences (no attention mask, no KV cache), which is what
the calibration windows are.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["CAPTURE_IMPLEMENTATION", "Capture", "LayerQKV", "capture_method", "capture_qkv"]

#: Name under which the capture attention (and its mask function) is registered in transformers.
CAPTURE_IMPLEMENTATION = "sampleattn_capture"

#: Largest magnitude float16 can hold; tensors beyond it are kept in float32 when storing as fp16.
FP16_MAX = 65504.0

LayerQKV = dict  # {"q": Tensor, "k": Tensor, "v": Tensor[, "o": Tensor]}, flash layout


@dataclass
class Capture:
    """The result of `capture_qkv`.

    Attributes:
        qkv: layer index -> ``{"q": (batch, seqlen, num_q_heads, head_dim), "k": (batch, seqlen,
            num_kv_heads, head_dim), "v": same as k}`` (plus ``"o"``, the attention output
            ``(batch, seqlen, num_q_heads, head_dim)``, when asked for). Empty when the layers
            were handed to an ``on_layer`` callback instead.
        logits: final logits ``(batch, seqlen, vocab)``, or ``(batch, len(logit_positions), vocab)``
            when positions were given; float32.
        logit_positions: the positions the logits belong to (``None``: all positions).
        layers: the layer indices that were captured, in order.
    """

    qkv: dict[int, LayerQKV]
    logits: torch.Tensor | None
    logit_positions: torch.Tensor | None
    layers: list[int] = field(default_factory=list)


class _Recorder:
    """Receives q/k/v in ``(batch, heads, seqlen, dim)`` layout and stores them in flash layout."""

    def __init__(
        self,
        layers: set[int] | None,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
        outputs: bool,
        on_layer: Callable[[int, LayerQKV], None] | None,
    ) -> None:
        self.layers = layers
        self.dtype = dtype
        self.device = device
        self.outputs = outputs
        self.on_layer = on_layer
        self.qkv: dict[int, LayerQKV] = {}
        self.seen: list[int] = []

    def wants(self, layer_idx: int) -> bool:
        return self.layers is None or layer_idx in self.layers

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        x = x.detach()
        if self.dtype is not None and self.dtype != x.dtype:
            if self.dtype == torch.float16 and x.is_floating_point() and x.abs().max().item() > FP16_MAX:
                x = x.float()  # would overflow fp16: keep full precision for this tensor
            else:
                x = x.to(self.dtype)
        if self.device is not None:
            x = x.to(self.device)
        return x.contiguous()

    def record_bhsd(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor | None
    ) -> None:
        """q (batch, hq, s, d), k/v (batch, hkv, s, d), o (batch, s, hq, d) or None."""
        if not self.wants(layer_idx):
            return
        if layer_idx in self.seen:
            raise RuntimeError(
                f"layer {layer_idx} reached the capture twice in one forward pass; capture expects "
                "one prefill without a KV cache"
            )
        self.seen.append(layer_idx)
        entry: LayerQKV = {
            "q": self._convert(q.transpose(1, 2)),
            "k": self._convert(k.transpose(1, 2)),
            "v": self._convert(v.transpose(1, 2)),
        }
        if self.outputs and o is not None:
            entry["o"] = self._convert(o)
        if self.on_layer is not None:
            self.on_layer(layer_idx, entry)
        else:
            self.qkv[layer_idx] = entry


_ACTIVE: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("sampleattn_capture", default=None)


# --------------------------------------------------------------------------------------------
# attention_interface families
# --------------------------------------------------------------------------------------------


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """AttentionInterface function: record q/k/v, then run transformers' SDPA attention.

    ``query`` is (batch, num_q_heads, seqlen, head_dim); ``key``/``value`` are (batch,
    num_kv_heads, seqlen, head_dim). Returns ``(output (batch, seqlen, num_q_heads, head_dim), None)``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.record_bhsd(module.layer_idx, query, key, value, output)
    return output, weights


_registered = False


def _register_interface() -> None:
    """Register the capture attention and its mask function with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capture_attention)
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)
    _registered = True


@contextlib.contextmanager
def _attention_interface_patch(model: Any) -> Iterator[None]:
    _register_interface()
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    if model.config._attn_implementation != CAPTURE_IMPLEMENTATION:
        raise RuntimeError(
            f"{type(model).__name__} refused attn_implementation={CAPTURE_IMPLEMENTATION!r}; it does not "
            "route attention through transformers.AttentionInterface, so it needs a "
            "patch_core_attention entry in the catalogue"
        )
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


# --------------------------------------------------------------------------------------------
# Remote-code families (untested here: written from the published modeling code)
# --------------------------------------------------------------------------------------------


def _sbhd(x: torch.Tensor) -> torch.Tensor:
    """ChatGLM's [seqlen, batch, heads, dim] -> [batch, heads, seqlen, dim]."""
    return x.permute(1, 2, 0, 3)


@contextlib.contextmanager
def _chatglm2_patch(model: Any) -> Iterator[None]:
    """Wrap ``CoreAttention.forward`` of every ChatGLM2 layer.

    ChatGLM2's ``SelfAttention`` applies RoPE, expands K and V from the ``multi_query_group_num``
    groups to all query heads (``unsqueeze(-2).expand(...)``, so query head ``h`` uses group
    ``h // group_size``), then calls ``core_attention(query, key, value, attention_mask)`` with
    ``[seqlen, batch, heads, head_dim]`` tensors. The wrapper records query, key[:, :, ::group] and
    value[:, :, ::group] (one head per group) and calls the original forward unchanged.
    """
    import torch

    layers = model.transformer.encoder.layers
    originals = []
    for layer_idx, layer in enumerate(layers):
        core = layer.self_attention.core_attention
        original = core.forward
        num_q = layer.self_attention.num_attention_heads_per_partition
        groups = getattr(layer.self_attention, "num_multi_query_groups_per_partition", num_q)
        group_size = num_q // groups

        def forward(
            query_layer,
            key_layer,
            value_layer,
            attention_mask,
            *args,
            _orig=original,
            _idx=layer_idx,
            _g=group_size,
            **kwargs,
        ):
            out = _orig(query_layer, key_layer, value_layer, attention_mask, *args, **kwargs)
            recorder = _ACTIVE.get()
            if recorder is not None and recorder.wants(_idx):
                if attention_mask is not None:
                    raise RuntimeError("ChatGLM2 capture expects unpadded prefill (attention_mask None)")
                o = None
                if recorder.outputs:  # [s, b, h*d] -> [b, s, h, d]
                    o = out.view(out.shape[0], out.shape[1], -1, query_layer.shape[-1]).transpose(0, 1)
                recorder.record_bhsd(
                    _idx, _sbhd(query_layer), _sbhd(key_layer[:, :, ::_g]), _sbhd(value_layer[:, :, ::_g]), o
                )
            return out

        core.forward = forward
        originals.append(core)
    try:
        with torch.inference_mode():
            yield
    finally:
        for core in originals:
            del core.forward  # drop the instance attribute: the class method is back


def _internlm2_forward(
    self,
    hidden_states,
    attention_mask=None,
    position_ids=None,
    past_key_value=None,
    output_attentions=False,
    use_cache=False,
    **kwargs,
):
    """InternLM2 attention for unpadded prefill, through SDPA, recording q/k/v.

    Same computation as the published ``InternLM2Attention.forward``: ``wqkv`` output split as
    ``b q (h gs d) -> b q h gs d`` with ``gs = 2 + num_key_value_groups`` (queries, then key, then
    value of each KV head), the module's own ``rotary_emb`` and the modeling file's
    ``apply_rotary_pos_emb`` (old signature with ``position_ids`` or new one without), causal SDPA
    with GQA, then ``wo``. It avoids the eager path's (seqlen x seqlen) score matrix.
    """
    import torch
    import torch.nn.functional as F

    if past_key_value is not None:
        raise RuntimeError("InternLM2 capture expects a prefill without a KV cache (use_cache=False)")
    bsz, q_len, _ = hidden_states.shape
    groups = self.num_key_value_groups
    qkv = self.wqkv(hidden_states).view(bsz, q_len, self.num_key_value_heads, 2 + groups, self.head_dim)
    query = qkv[..., :groups, :].reshape(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
    key = qkv[..., -2, :].transpose(1, 2)
    value = qkv[..., -1, :].transpose(1, 2)
    if position_ids is None:
        position_ids = torch.arange(q_len, device=hidden_states.device).unsqueeze(0)
    modeling = sys.modules[type(self).__module__]
    apply_rope = modeling.apply_rotary_pos_emb
    if "position_ids" in inspect.signature(self.rotary_emb.forward).parameters:
        cos, sin = self.rotary_emb(value, position_ids)  # new revisions: per-position cos/sin
        query, key = apply_rope(query, key, cos, sin)
    else:
        cos, sin = self.rotary_emb(value, seq_len=q_len)  # old revisions: table indexed by position
        query, key = apply_rope(query, key, cos, sin, position_ids)
    out = F.scaled_dot_product_attention(query, key, value, is_causal=q_len > 1, enable_gqa=groups > 1)
    out = out.transpose(1, 2)  # (b, s, h, d)
    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.record_bhsd(self._sampleattn_layer_idx, query, key, value, out)
    out = self.wo(out.reshape(bsz, q_len, self.num_heads * self.head_dim))
    return out, None, None


@contextlib.contextmanager
def _internlm2_patch(model: Any) -> Iterator[None]:
    """Replace every InternLM2 attention module's forward by `_internlm2_forward`.

    Also makes the decoder skip building its (batch, 1, seqlen, seqlen) float mask, which the
    replacement does not use (causality comes from SDPA's ``is_causal``).
    """
    import types

    import torch

    backbone = model.model
    patched = []
    for layer_idx, layer in enumerate(backbone.layers):
        attention = layer.attention
        attention._sampleattn_layer_idx = layer_idx
        attention.forward = types.MethodType(_internlm2_forward, attention)
        patched.append(attention)
    mask_builders = [
        name for name in ("_prepare_decoder_attention_mask", "_update_causal_mask") if hasattr(backbone, name)
    ]
    for name in mask_builders:
        setattr(backbone, name, lambda *args, **kwargs: None)
    try:
        with torch.inference_mode():
            yield
    finally:
        for attention in patched:
            del attention.forward
        for name in mask_builders:
            delattr(backbone, name)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def capture_method(model: Any) -> str:
    """The capture method for ``model``: its catalogue entry's, else guessed from ``config.model_type``."""
    from .catalog import get_model_spec
    from .loading import load_info

    info = load_info(model)
    if info is not None:
        spec = get_model_spec(info.model)
        return spec.family if spec.capture.method == "patch_core_attention" else "attention_interface"
    model_type = getattr(model.config, "model_type", "")
    if model_type == "chatglm":
        return "chatglm2"
    if model_type in ("internlm2", "internlm"):
        return "internlm2"
    return "attention_interface"


_PATCHES = {
    "attention_interface": _attention_interface_patch,
    "chatglm2": _chatglm2_patch,
    "internlm2": _internlm2_patch,
}


def capture_qkv(
    model: Any,
    input_ids: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    outputs: bool = False,
    logit_positions: torch.Tensor | Sequence[int] | None = None,
    with_logits: bool = True,
    on_layer: Callable[[int, LayerQKV], None] | None = None,
) -> Capture:
    """Run one prefill of ``model`` on ``input_ids`` and capture every layer's post-RoPE q, k, v.

    Args:
        model: a causal LM from `loading.load_model` (or any transformers model of a supported family).
        input_ids: ``(batch, seqlen)`` or ``(seqlen,)`` token ids, unpadded.
        layers: layer indices to keep (default: all). The prefill runs through every layer anyway.
        dtype: dtype to store the captured tensors in (default: the model's compute dtype). With
            ``torch.float16``, a tensor whose magnitude exceeds the fp16 range stays float32.
        device: where to keep the captured tensors (default: where they were computed).
        outputs: also keep each layer's attention output as ``"o"`` ``(batch, seqlen, num_q_heads, head_dim)``.
        logit_positions: positions whose logits to return (default: all positions).
        with_logits: return the logits at all (they are ``(batch, seqlen, vocab)`` float32).
        on_layer: if given, called as ``on_layer(layer_idx, {"q", "k", "v"[, "o"]})`` as soon as a
            layer is captured, and the tensors are not kept (bounded memory for long captures).

    Returns:
        A `Capture`: ``qkv[layer] = {"q": (batch, seqlen, num_q_heads, head_dim), "k": (batch, seqlen,
        num_kv_heads, head_dim), "v": same as k}``, the logits, and the captured layer indices.
        The model is restored to its previous attention implementation afterwards.
    """
    import torch

    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids has {input_ids.dim()} dims; expected (batch, seqlen) or (seqlen,)")
    num_layers = int(getattr(model.config, "num_hidden_layers", None) or model.config.num_layers)
    wanted: set[int] | None = None
    if layers is not None:
        wanted = {int(i) for i in layers}
        bad = sorted(i for i in wanted if not 0 <= i < num_layers)
        if bad:
            raise ValueError(f"layers {bad} out of range; the model has {num_layers} layers (0..{num_layers - 1})")
    positions = None
    if logit_positions is not None:
        positions = torch.as_tensor(logit_positions, dtype=torch.long)
        if positions.dim() != 1 or (
            positions.numel() and (positions.min() < 0 or positions.max() >= input_ids.shape[1])
        ):
            raise ValueError(f"logit_positions must be a 1-D list of positions in [0, {input_ids.shape[1]})")

    recorder = _Recorder(wanted, dtype, device, outputs, on_layer)
    method = capture_method(model)
    device_of_model = next(model.parameters()).device
    input_ids = input_ids.to(device_of_model)
    token = _ACTIVE.set(recorder)
    try:
        with _PATCHES[method](model), torch.inference_mode():
            kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
            if method == "attention_interface":  # compute only the logits that are asked for
                if not with_logits:
                    kwargs["logits_to_keep"] = 1
                elif positions is not None:
                    kwargs["logits_to_keep"] = positions.to(device_of_model)
            result = model(**kwargs)
    finally:
        _ACTIVE.reset(token)

    expected = sorted(wanted) if wanted is not None else list(range(num_layers))
    if sorted(recorder.seen) != expected:
        missing = sorted(set(expected) - set(recorder.seen))
        raise RuntimeError(
            f"capture saw layers {sorted(recorder.seen)} but expected {expected} (missing {missing[:8]}); "
            f"the model's attention did not go through the {method!r} capture path"
        )
    logits = None
    if with_logits:
        logits = result.logits if hasattr(result, "logits") else result[0]
        if positions is not None and method != "attention_interface":
            logits = logits[:, positions.to(logits.device)]
        logits = logits.detach().float()
    return Capture(qkv=recorder.qkv, logits=logits, logit_positions=positions, layers=list(recorder.seen))
