"""The tuner: model catalogue, model loading, calibration data, search (``import sampleattn.tuner``).

Data side (this package's modules; attributes load lazily so ``import sampleattn.tuner`` imports
neither torch nor transformers)::

    from sampleattn.tuner import get_model_spec, load_model, CalibrationCache, essays_text
    spec = get_model_spec("smollm2-135m")
    model, tokenizer = load_model(spec, max_length=4096)          # offline; RoPE scaling if needed
    cache = CalibrationCache()                                   # $XDG_CACHE_HOME/sampleattn/calibration
    sample = cache.get_or_capture(model, tokenizer, text=essays_text(), length=4096, sample=0)
    qkv = sample.layer(0)   # q (1, 4096, 9, 64), k and v (1, 4096, 3, 64), float16

Modules: `catalog` (ModelSpec, CATALOG), `models` (load_model), `capture` (capture_qkv),
`calibration` (text, windows, cache, synthetic calibration).

Search side (docs/tuner.md): `search` (`tune(TuneOptions(...))`, the driver), `options` (the
run's options and names), `samples` (its calibration samples), `stages` (the search at one
length), `trials` (a study's trials and their resume), `workers` (Ray actors), `evaluate` (a
trial's evaluation), `outcome` (what a worker returns), `objectives` (what a trial's error
means), `search_space` (parameters, budget, per-layer assignment), `report` (summary, plot),
`cli` (``sattn-tune``); ray and optuna are imported only when a search runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AttentionGeometry": "sampleattn.tuner.catalog",
    "CATALOG": "sampleattn.tuner.catalog",
    "CaptureSpec": "sampleattn.tuner.catalog",
    "DEFAULT_MODEL": "sampleattn.tuner.catalog",
    "ModelSpec": "sampleattn.tuner.catalog",
    "UnknownModelError": "sampleattn.tuner.catalog",
    "get_model_spec": "sampleattn.tuner.catalog",
    "list_models": "sampleattn.tuner.catalog",
    "LoadInfo": "sampleattn.tuner.models",
    "ModelNotAvailableError": "sampleattn.tuner.models",
    "load_info": "sampleattn.tuner.models",
    "load_model": "sampleattn.tuner.models",
    "resolve_model_source": "sampleattn.tuner.models",
    "Capture": "sampleattn.tuner.capture",
    "capture_qkv": "sampleattn.tuner.capture",
    "CalibrationCache": "sampleattn.tuner.calibration",
    "CalibrationSample": "sampleattn.tuner.calibration",
    "SyntheticSample": "sampleattn.tuner.calibration",
    "calibration_windows": "sampleattn.tuner.calibration",
    "default_cache_root": "sampleattn.tuner.calibration",
    "essays_text": "sampleattn.tuner.calibration",
    "load_calibration_file": "sampleattn.tuner.calibration",
    "synthetic_calibration": "sampleattn.tuner.calibration",
    "text_fingerprint": "sampleattn.tuner.calibration",
    "TuneOptions": "sampleattn.tuner.search",
    "TuneReport": "sampleattn.tuner.search",
    "tune": "sampleattn.tuner.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sampleattn.tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
