"""The tuner: search for each model and length the profile that meets an accuracy budget at the
lowest estimated cost, and write it to the profile store (``import sampleattn.tuner``; docs/tuner.md).

    from sampleattn.tuner import TuneOptions, tune
    report = tune(TuneOptions(model="smollm2-135m", lengths=[1024, 2048], trials=24, device="cpu"))

Modules: `search` (`tune(TuneOptions(...))`, the driver), `options` (the run's options and
names), `samples` (its calibration samples), `stages` (the search at one length), `trials` (a
study's trials and their resume), `workers` (Ray actors), `evaluate` (a trial's evaluation),
`outcome` (what a worker returns), `objectives` (what a trial's error means), `search_space`
(parameters, budget, per-layer assignment), `report` (summary, plot), `cli` (``sattn-tune``).
The models and their calibration data (catalogue, loading, capture, cache) are
`sampleattn.models`. Attributes load lazily (``lazy_loader``): ray and optuna are imported only
when a search runs.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "search": ["TuneOptions", "TuneReport", "tune"],
})
