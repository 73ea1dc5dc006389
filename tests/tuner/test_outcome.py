"""What a worker returns (`TrialOutcome`), how it is stored, and what each objective reads of it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sampleattn.tuner.objectives import OBJECTIVES, LayerObjective, ModelObjective, get_objective
from sampleattn.tuner.outcome import LayerMetrics, TrialOutcome, TrialResult, layer_costs


def _result(**extra: float) -> TrialResult:
    layers = {0: LayerMetrics(rel_error=0.02, retained_mean=0.97, retained_min=0.9, density=0.3, latency_ms=1.5,
                              dense_latency_ms=4.0),
              7: LayerMetrics(rel_error=0.06, retained_mean=0.93, retained_min=0.8, density=0.5, latency_ms=2.5,
                              dense_latency_ms=4.0)}
    return TrialResult(rel_error=0.04, rel_error_max=0.06, retained_mass_mean=0.95, retained_mass_min=0.8,
                       density=0.4, latency_ms=4.0, dense_latency_ms=8.0, latency_measured=False, layers=layers,
                       extra=extra)


def test_an_outcome_holds_a_result_or_an_error():
    assert TrialOutcome(worker="cpu-actor-0", result=_result()).ok
    assert not TrialOutcome(worker="cpu-actor-0", error="RuntimeError: boom").ok
    with pytest.raises(ValidationError, match="either a result or an error"):
        TrialOutcome(worker="cpu-actor-0")
    with pytest.raises(ValidationError, match="either a result or an error"):
        TrialOutcome(worker="cpu-actor-0", result=_result(), error="both")
    with pytest.raises(ValidationError):  # a negative error is no measurement
        TrialResult(**{**_result().model_dump(), "rel_error": -0.1})


def test_stored_metrics_give_back_each_layer_and_the_objectives_error():
    metrics = _result(kl_divergence=0.03).store_metrics()
    assert layer_costs(metrics.extra) == {0: (0.02, 1.5), 7: (0.06, 2.5)}
    assert metrics.speedup == pytest.approx(2.0) and metrics.extra["rel_error_max"] == 0.06
    assert LayerObjective().error(metrics) == 0.04
    assert ModelObjective().error(metrics) == 0.03
    with pytest.raises(KeyError, match="kl_divergence"):
        ModelObjective().error(_result().store_metrics())
    # the per-layer stage's budget: the objective's own for the layer error; for KL, the
    # global config's mean layer error
    assert LayerObjective().layer_budget(0.07, metrics) == 0.07
    assert ModelObjective().layer_budget(0.05, metrics) == 0.04


def test_objectives_by_name():
    assert list(OBJECTIVES) == ["layer", "model"]
    assert get_objective("model").needs_model and not get_objective("layer").needs_model
    with pytest.raises(ValueError, match="choose one of layer, model"):
        get_objective("loss")
    with pytest.raises(ValueError, match="needs real text"):
        ModelObjective().check_calibration("synthetic")
    LayerObjective().check_calibration("synthetic")
