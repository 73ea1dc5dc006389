"""What a worker sends back for one trial: one validated `TrialOutcome`.

A worker evaluates a profile into a `TrialResult` (its metrics, per layer and aggregated) and
wraps it, or the reason it failed, in a `TrialOutcome` with the worker's name, device and the
time it took. Both are frozen pydantic models, validated where they are made (in the worker) and
shipped through Ray as they are. The driver turns a result into the store's `TrialMetrics`
once (`TrialResult.store_metrics`) and writes it once; `layer_costs` reads the per-layer part
back from a stored trial (the per-layer stage's candidates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LayerMetrics", "TrialOutcome", "TrialResult", "layer_costs"]

_LAYER_KEY = re.compile(r"^layer(\d+)_(rel_error|latency_ms)$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LayerMetrics(_Frozen):
    """Metrics of one layer under one trial's config (averaged over samples)."""

    rel_error: float = Field(ge=0.0)
    retained_mean: float
    retained_min: float
    density: float = Field(ge=0.0)
    latency_ms: float = Field(ge=0.0)
    dense_latency_ms: float = Field(ge=0.0)
    dense: bool = False


class TrialResult(_Frozen):
    """The metrics of one evaluated profile.

    ``layers`` maps layer index -> `LayerMetrics`; ``extra`` holds objective-specific metrics
    (``kl_divergence``, ``top1_agreement``...). ``latency_ms`` and ``dense_latency_ms`` are sums
    over the evaluated layers; ``latency_measured`` is True for CUDA-event timings.
    """

    rel_error: float = Field(ge=0.0)
    rel_error_max: float = Field(ge=0.0)
    retained_mass_mean: float
    retained_mass_min: float
    density: float = Field(ge=0.0)
    latency_ms: float = Field(ge=0.0)
    dense_latency_ms: float = Field(ge=0.0)
    latency_measured: bool
    layers: dict[int, LayerMetrics] = Field(default_factory=dict)
    extra: dict[str, float] = Field(default_factory=dict)

    def with_extra(self, metrics: Mapping[str, float]) -> TrialResult:
        """This result with more objective-specific metrics."""
        return self.model_copy(update={"extra": {**self.extra, **metrics}})

    def store_metrics(self) -> Any:
        """The store's `TrialMetrics`: the aggregates as columns; the worst layer, the objective's
        metrics and each layer's error and latency (``layer007_rel_error``,
        ``layer007_latency_ms``) in ``extra``."""
        from sampleattn.store.schemas import TrialMetrics

        extra = {"rel_error_max": self.rel_error_max, **self.extra}
        for index, layer in sorted(self.layers.items()):
            extra[f"layer{index:03d}_rel_error"] = layer.rel_error
            extra[f"layer{index:03d}_latency_ms"] = layer.latency_ms
        return TrialMetrics(
            rel_error=self.rel_error, retained_mass_mean=self.retained_mass_mean,
            retained_mass_min=self.retained_mass_min, density=min(1.0, self.density), latency_ms=self.latency_ms,
            dense_latency_ms=self.dense_latency_ms, latency_measured=self.latency_measured, extra=extra,
        )


def layer_costs(extra: Mapping[str, float]) -> dict[int, tuple[float, float]]:
    """``{layer: (rel_error, latency_ms)}`` from a stored trial's ``metrics.extra`` (the inverse of
    `TrialResult.store_metrics` for the per-layer part); layers missing either value are left out."""
    found: dict[int, dict[str, float]] = {}
    for key, value in extra.items():
        match = _LAYER_KEY.match(key)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = float(value)
    return {layer: (v["rel_error"], v["latency_ms"]) for layer, v in sorted(found.items())
            if "rel_error" in v and "latency_ms" in v}


class TrialOutcome(_Frozen):
    """What a worker returns for one trial: its result, or why it failed (exactly one of the two).

    Attributes:
        worker: the worker's name (``cpu-actor-0``...).
        device: the worker's device (GPU name or ``cpu``); None when the worker died.
        duration_s: seconds the evaluation took; None when the worker died.
        result: the metrics of a trial that completed.
        error: ``Type: message`` of a trial that failed.
    """

    worker: str
    device: str | None = None
    duration_s: float | None = Field(None, ge=0.0)
    result: TrialResult | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TrialOutcome:
        if (self.result is None) == (self.error is None):
            raise ValueError("a trial outcome holds either a result or an error, not both nor neither")
        return self

    @property
    def ok(self) -> bool:
        return self.result is not None
