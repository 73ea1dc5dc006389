"""The calibration samples of a tuning run: synthetic ones, or q/k/v captured from the model on
real text (once; `CalibrationCache` keeps them on disk for the next run and for the workers)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from sampleattn.lengths import format_length

from .options import TuneOptions, calibration_text

__all__ = ["RunSamples", "capture_samples"]


@dataclass
class RunSamples:
    """Samples per length, the run's calibration record and what the model load tells the run."""

    by_length: dict[int, list[Any]]
    calibration: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def capture_samples(options: TuneOptions, spec: Any, device: str, model: Any = None, tokenizer: Any = None,
                    out: TextIO | None = None) -> RunSamples:
    """The samples of every length of ``options``. Real text is captured with ``model`` when given,
    else with the model loaded here (and freed before the search starts)."""
    from sampleattn.models.calibration import CalibrationCache
    from sampleattn.models.samples import synthetic_calibration
    from sampleattn.models.text import text_fingerprint

    if options.calibration == "synthetic":
        return RunSamples(
            {n: synthetic_calibration(spec, n, options.samples, options.seed) for n in options.lengths},
            {"kind": "synthetic", "source": "synthetic", "fingerprint": None, "samples": options.samples},
        )
    text, source = calibration_text(options)
    import torch

    from sampleattn.models.loading import load_info, load_model

    attrs: dict[str, Any] = {}
    owned = model is None
    if owned:
        started = time.perf_counter()
        model, tokenizer = load_model(spec, model_path=options.model_path, device=device,
                                      max_length=max(options.lengths))
        _say(out, f"model: {spec.name} loaded in {time.perf_counter() - started:.1f} s")
    info_load = load_info(model)
    if info_load is not None:
        attrs["model_source"] = info_load.location
        attrs["rope_scaling"] = info_load.rope_scaling
    cache = CalibrationCache(options.cache_dir)
    samples: dict[int, list[Any]] = {}
    for length in sorted(options.lengths):
        started = time.perf_counter()
        before = cache.stats.captures
        samples[length] = cache.get_or_capture_many(model, tokenizer, text=text, length=length,
                                                    samples=options.samples, seed=options.seed,
                                                    model_name=spec.name, progress=options.progress)
        captured = cache.stats.captures - before
        _say(out, f"calibration {format_length(length)}: {options.samples} sample(s) of {source} "
                  f"({captured} captured, {options.samples - captured} from the cache {cache.root}) "
                  f"in {time.perf_counter() - started:.1f} s")
    if owned:
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    info = {"kind": "real", "source": source, "fingerprint": text_fingerprint(text), "samples": options.samples}
    return RunSamples(samples, info, attrs)
