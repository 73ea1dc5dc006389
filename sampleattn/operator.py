"""`SampleAttention`: the object users hold, one per model.

It carries a `ModelAttentionProfile` (a global config, per-layer and per-head overrides),
checks the geometry of the model it is applied to, and dispatches each call to the kernels or
to dense attention. `SampleAttention.from_profile` loads a tuned profile from the profile store
(reached through `sampleattn.profile_source`, so the core never imports the store).
"""

from __future__ import annotations

import numbers

import torch

from .attention import Backend, sample_attention
from .config import ModelAttentionProfile, SampleAttentionConfig
from .geometry import Geometry

__all__ = ["SampleAttention"]


class SampleAttention:
    """SampleAttention configured per layer (and per head where tuned).

    Example::

        attn = SampleAttention(SampleAttentionConfig(alpha=0.95))
        out = attn(q, k, v, layer=3)     # q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D)

    Args:
        profile: a `ModelAttentionProfile`, or one `SampleAttentionConfig` for every layer.
        geometry: the model's `Geometry`, when known; profiles and inputs are checked against it.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see `sampleattn.attention`).
        as_custom_op: run each call through the custom op ``torch.ops.sampleattn.sample_attention``
            (`sampleattn.ops`), so that `torch.compile` (``fullgraph=True``) of a model that holds
            this object does not break its graph; such calls return the output only.
        static_kmax: plan without a host synchronisation (`sampleattn.selection.static_kmax`),
            for CUDA-graph capture; the results are the same.
    """

    def __init__(
        self,
        profile: ModelAttentionProfile | SampleAttentionConfig | None = None,
        *,
        geometry: Geometry | None = None,
        backend: Backend = "auto",
        as_custom_op: bool = False,
        static_kmax: bool = False,
    ) -> None:
        if profile is None:
            profile = ModelAttentionProfile()
        elif isinstance(profile, SampleAttentionConfig):
            profile = ModelAttentionProfile(config=profile)
        elif not isinstance(profile, ModelAttentionProfile):
            raise ValueError(
                f"profile must be a ModelAttentionProfile or SampleAttentionConfig, got {type(profile).__name__}"
            )
        self.profile = profile
        # Each overridden layer's config and head overrides, made (and validated) once, at its
        # first call: a forward pass asks for them in every layer, every call.
        self._layers: dict[int, tuple[SampleAttentionConfig, dict]] = {}
        self.backend: Backend = backend
        self.source = None  # the store's ProfileRecord when loaded with from_profile
        self.geometry = geometry
        if geometry is not None:
            self.check_geometry(geometry)
        self.as_custom_op = as_custom_op
        self.static_kmax = static_kmax
        self._op_args: dict[int, tuple[str, str]] = {}
        if as_custom_op:
            from .ops import op_arguments

            # Serialized once here: torch.compile then reads plain strings, never pydantic code.
            self._op_default = op_arguments(profile.config)
            self._op_args = {layer: op_arguments(self.config_for(layer), profile.head_overrides(layer))
                             for layer in profile.layers}

    @classmethod
    def from_profile(
        cls,
        model: str,
        seq_len: int | str | None = None,
        store=None,
        *,
        geometry: Geometry | None = None,
        allow_synthetic: bool = False,
        backend: Backend = "auto",
    ) -> "SampleAttention":
        """Load the tuned profile of ``model`` for ``seq_len`` from a profile store.

        Args:
            model: the model's catalogue name (e.g. ``"smollm2-135m"``).
            seq_len: the prompt length to serve (``32k``, ``32768``...); the store's bucket rule
                picks the profile. None picks the longest tuned length.
            store: a `sampleattn.store.ProfileStore`, a SQLAlchemy URL, or None for the default.
            geometry: the geometry of the model it will run on; checked against the profile.
            allow_synthetic: accept a profile tuned on synthetic calibration data.
        """
        from .profile_source import load_tuned_profile

        tuned = load_tuned_profile(model, seq_len, store, allow_synthetic=allow_synthetic)
        if geometry is not None and geometry != tuned.geometry:
            raise ValueError(
                f"the profile of {model!r} was tuned for {tuned.geometry}, but the model it is "
                f"applied to has {geometry}: tune this model, or load the right profile"
            )
        operator = cls(tuned.profile, geometry=tuned.geometry, backend=backend)
        operator.source = tuned.source
        return operator

    def check_geometry(self, geometry: Geometry) -> None:
        """Raise if a layer or head override names a layer or head the model does not have."""
        self.profile.check_geometry(geometry.num_layers, geometry.num_q_heads)

    def config_for(self, layer: int) -> SampleAttentionConfig:
        """The config used for one layer."""
        return self._layer(self.check_layer(layer))[0]

    def _layer(self, layer: int) -> tuple[SampleAttentionConfig, dict]:
        """(config, head overrides) of a checked layer index, cached per layer."""
        found = self._layers.get(layer)
        if found is None:
            found = self._layers[layer] = (self.profile.layer_config(layer), self.profile.head_overrides(layer))
        return found

    def check_layer(self, layer: int) -> int:
        """``layer`` as an int, or `ValueError` when it cannot name a layer of the model.

        A layer index is an int >= 0 (not a bool, not a string: ``"1"`` would silently miss the
        profile's override of layer 1), and below ``geometry.num_layers`` when the geometry is
        known. Without a geometry, an index past the profile's highest override is accepted: the
        global config applies to it, as to every layer without an override.
        """
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ValueError(f"layer={layer!r} must be an int (the layer's index, from 0), "
                             f"got {type(layer).__name__}")
        layer = int(layer)
        if layer < 0:
            raise ValueError(f"layer={layer} is negative: layers are indexed from 0 (count from the "
                             "first layer, not from the end)")
        if self.geometry is not None and layer >= self.geometry.num_layers:
            raise ValueError(f"layer={layer} is out of range for a model of {self.geometry.num_layers} layers")
        return layer

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        layer: int = 0,
        scale: float | None = None,
        return_lse: bool = False,
        return_plan: bool = False,
    ):
        """Attention of one layer: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) -> (B, Sq, Hq, D).

        Dense (PyTorch SDPA) below the layer's ``dense_below`` keys; SampleAttention above.
        With ``as_custom_op`` the call goes through the custom op, which returns the output only.
        """
        layer = self.check_layer(layer)
        if self.geometry is not None:
            self.geometry.check_qk(q, k)
        if self.as_custom_op:
            if return_lse or return_plan:
                raise ValueError("the custom op returns the output only: make the SampleAttention with "
                                 "as_custom_op=False for return_lse or return_plan")
            from .ops import sample_attention_op

            config_json, heads_json = self._op_args.get(layer, self._op_default)
            return sample_attention_op(q, k, v, config_json, scale=scale, heads=heads_json,
                                       backend=self.backend, static_kmax=self.static_kmax)
        config, heads = self._layer(layer)
        return sample_attention(
            q, k, v, config, scale=scale, return_lse=return_lse, return_plan=return_plan, heads=heads,
            backend=self.backend, static_kmax=self.static_kmax,
        )

    def __repr__(self) -> str:
        return (f"SampleAttention(config={self.profile.config!r}, layer_overrides={len(self.profile.layers)}, "
                f"backend={self.backend!r}{', as_custom_op=True' if self.as_custom_op else ''})")
