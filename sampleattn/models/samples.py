"""Calibration samples: one captured window read from the cache, or one synthetic window.

Both types offer ``layers``, ``layer(i) -> {"q", "k", "v"}``, ``iter_layers()``, ``input_ids``,
``logits``, ``logit_positions``, ``meta`` and ``synthetic``, so the tuner treats them alike.

`synthetic_calibration(geometry, length, samples, seed)` makes synthetic samples, backed by
`sampleattn.synthetic.structured_qkv`, for dry runs and tests (recorded as synthetic).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sampleattn.geometry import Geometry

from .catalog import ModelSpec, get_model_spec

if TYPE_CHECKING:
    import torch

    from .calibration import CacheKey

__all__ = ["CalibrationSample", "SyntheticSample", "synthetic_calibration"]


def _load_safetensors(path: Path, device: str | torch.device | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device) if device is not None else "cpu")


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

    geometry: Geometry
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


def _as_geometry(spec_or_geometry: ModelSpec | Geometry | str | Sequence[int]) -> Geometry:
    if isinstance(spec_or_geometry, Geometry):
        return spec_or_geometry
    if isinstance(spec_or_geometry, (ModelSpec, str)):
        return get_model_spec(spec_or_geometry).geometry
    values = tuple(int(x) for x in spec_or_geometry)
    if len(values) != 4:
        raise ValueError("a geometry is (num_layers, num_q_heads, num_kv_heads, head_dim)")
    return Geometry(*values)


def synthetic_calibration(
    spec_or_geometry: ModelSpec | Geometry | str | Sequence[int],
    length: int,
    samples: int,
    seed: int = 0,
    **generator_kwargs: Any,
) -> list[SyntheticSample]:
    """Synthetic calibration samples with a model's attention geometry.

    Args:
        spec_or_geometry: a `ModelSpec`, a catalogue name, a `Geometry`, or a tuple
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
