"""The calibration cache: captured q/k/v of real prefills, stored on disk and read back.

`CalibrationCache(root).get_or_capture(model, tokenizer, text=..., length=..., sample=i)` runs
one prefill of window ``i`` (`sampleattn.models.text.calibration_windows`) through `capture_qkv`
and stores, per sample, one safetensors file per layer (``q (1, length, num_q_heads, head_dim)``,
``k``/``v`` ``(1, length, num_kv_heads, head_dim)``, float16 by default), the input ids and the
logits at a fixed set of positions, and a ``meta.json``. The next run with the same model
weights, length, sample, text fingerprint, seed, RoPE scaling and compute dtype reads the files
instead of running the model, as a `sampleattn.models.samples.CalibrationSample`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .capture import capture_qkv
from .samples import CalibrationSample
from .text import calibration_windows, text_fingerprint

if TYPE_CHECKING:
    import torch

__all__ = ["CacheKey", "CalibrationCache", "default_cache_root", "logit_positions_for", "temp_folder_for"]

#: Version of the on-disk layout; part of every entry's metadata and path.
CACHE_FORMAT = 1

#: A temporary capture folder older than this is stale whoever wrote it (a capture takes
#: minutes); younger ones are removed only when their writer, on this host, has exited.
STALE_TEMP_SECONDS = 24 * 3600


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


@dataclass(frozen=True)
class CacheKey:
    """Identity of one cached capture (all of it shows in the entry's path and metadata).

    Attributes:
        model: catalogue name; source_id: id of the weights (`loading.ModelSource.source_id`);
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


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """``calibration/`` in sampleattn's cache folder (`sampleattn.paths.cache_root`:
    ``$SAMPLEATTN_CACHE`` if set, else the platform's user cache folder)."""
    from sampleattn.paths import cache_root

    return cache_root() / "calibration"


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
        from .loading import load_info, rope_tag

        if (text is None) == (text_fp is None):
            raise ValueError("give exactly one of text or text_fp")
        info = load_info(model)
        if info is None and model_name is None:
            raise ValueError("the model was not loaded with sampleattn.models.load_model; pass model_name")
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

    def get_or_capture(self, model: Any, tokenizer: Any, *, text: str, length: int, sample: int, seed: int = 0,
                       model_name: str | None = None, progress: bool = False) -> CalibrationSample:
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

    def get_or_capture_many(self, model: Any, tokenizer: Any, *, samples: int, length: int,
                            progress: bool = False, **window: Any) -> list[CalibrationSample]:
        """`get_or_capture` for samples ``0 .. samples - 1``; ``window`` holds the other keywords of
        `get_or_capture` (``text``, ``seed``, ``model_name``). ``progress``: a bar over the samples
        (with the time left) and, inside it, one over the layers of each capture."""
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=samples, desc=f"calibration {_short(length)}", unit="sample", disable=not progress,
                  mininterval=1.0) as bar:
            for i in range(samples):
                out.append(self.get_or_capture(model, tokenizer, length=length, sample=i, progress=progress,
                                               **window))
                bar.update(1)
        return out

    def _capture_into(self, key: CacheKey, model: Any, window: torch.Tensor, *, progress: bool = False,
                      desc: str = "capture") -> CalibrationSample:
        from safetensors.torch import save_file

        from .loading import load_info

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
