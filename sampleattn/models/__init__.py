"""Models and their calibration data (``import sampleattn.models``): the catalogue, offline
loading, the capture of post-RoPE q/k/v, calibration text, windows, samples and their cache.

    from sampleattn.models import get_model_spec, load_model, CalibrationCache, essays_text
    spec = get_model_spec("smollm2-135m")
    spec.geometry                 # Geometry(num_layers=30, num_q_heads=9, num_kv_heads=3, head_dim=64)
    model, tokenizer = load_model(spec, max_length=4096)          # offline; RoPE scaling if needed
    cache = CalibrationCache()                                   # $XDG_CACHE_HOME/sampleattn/calibration
    sample = cache.get_or_capture(model, tokenizer, text=essays_text(), length=4096, sample=0)
    qkv = sample.layer(0)   # q (1, 4096, 9, 64), k and v (1, 4096, 3, 64), float16

Modules: `catalog` (ModelSpec, CATALOG), `loading` (load_model, RoPE scaling), `capture`
(capture_qkv), `text` (calibration text, token windows), `samples` (captured and synthetic
samples), `calibration` (the on-disk cache). The tuner, the evaluation and the benchmarks use
this package; it uses only the core (`sampleattn`: `Geometry`, lengths, the synthetic generator).
Attributes load lazily (``lazy_loader``): ``import sampleattn.models`` imports neither torch
nor transformers.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "catalog": ["CATALOG", "CaptureSpec", "DEFAULT_MODEL", "Geometry", "ModelSpec", "UnknownModelError",
                "get_model_spec", "list_models"],
    "loading": ["LoadInfo", "ModelNotAvailableError", "configure_rope", "load_info", "load_model",
                "resolve_model_source", "rope_scaling_for"],
    "capture": ["Capture", "capture_qkv"],
    "text": ["calibration_windows", "essays_text", "load_calibration_file", "text_fingerprint"],
    "samples": ["CalibrationSample", "SyntheticSample", "synthetic_calibration"],
    "calibration": ["CalibrationCache", "default_cache_root"],
})
