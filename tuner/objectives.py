"""Tuning objectives: what a trial's error means, how a worker measures it, and its budget.

==========  =================================================================  =============
objective   error of a trial                                                   default budget
==========  =================================================================  =============
layer       mean over layers of the relative L2 error of the attention output  0.07
model       KL divergence of the final logits against full attention (nats     0.05
            per token), from a prefill of each calibration sample
==========  =================================================================  =============

An `Objective` owns its evaluator (`Objective.evaluator`: what a worker runs on a profile), the
metric that is its error (`Objective.error_key`, read by `Objective.error`), its default budget,
its labels for tables and plots, and the budget the per-layer stage gives each layer. The
driver, the workers, the summary and the plot ask the objective; none of them compares names.
A new objective is one subclass here and one entry in `OBJECTIVES`.

This module imports nothing heavy (``sattn-tune --help`` reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from sampleattn.config import ModelAttentionProfile
    from sampleattn.store.schemas import TrialMetrics

    from .evaluate import LayerEvaluator
    from .outcome import TrialResult

__all__ = ["OBJECTIVES", "LayerObjective", "ModelObjective", "Objective", "get_objective"]

#: What a worker calls on each trial's profile.
Evaluator = Callable[["ModelAttentionProfile"], "TrialResult"]


class Objective:
    """Base of the tuning objectives (stateless; one instance per objective in `OBJECTIVES`)."""

    #: The ``--objective`` value, recorded on the run and in study names.
    name: ClassVar[str]
    #: One line for ``--help``.
    summary: ClassVar[str]
    #: The metric that is the error: a `TrialMetrics` column or a key of its ``extra``.
    error_key: ClassVar[str]
    #: The error's column header in the summary table.
    label: ClassVar[str]
    #: The error's axis label on the Pareto plot.
    axis_label: ClassVar[str]
    #: Budget on the error when ``--max-error`` is not given.
    default_max_error: ClassVar[float]
    #: Whether the worker needs the model itself (not only the captured q/k/v).
    needs_model: ClassVar[bool] = False

    def error(self, metrics: TrialMetrics) -> float:
        """The trial's error in this objective's terms, from its stored metrics."""
        value = getattr(metrics, self.error_key, None)
        if value is None:
            value = metrics.extra.get(self.error_key)
        if value is None:
            raise KeyError(f"the trial's metrics have no {self.error_key!r}, the error of objective {self.name!r}")
        return float(value)

    def check_calibration(self, calibration: str) -> None:
        """Raise `ValueError` when this objective cannot use the ``--calibration`` source."""

    def evaluator(self, layers: LayerEvaluator, samples: Sequence[Any], *, model: Any = None,
                  device: str = "cpu") -> Evaluator:
        """What a worker runs on each trial's profile, given its per-layer evaluator, the
        calibration samples and (when `needs_model`) the loaded model."""
        return layers.evaluate

    def layer_budget(self, max_error: float, global_metrics: TrialMetrics) -> float:
        """The per-layer stage's budget on the mean layer error, given the run's ``max_error``
        and the metrics of the global config chosen in stage 1."""
        return max_error


class LayerObjective(Objective):
    """The mean relative L2 error of the attention output over layers: cheap, no model needed."""

    name = "layer"
    summary = "per-layer attention error (cheap)"
    error_key = "rel_error"
    label = "rel_error"
    axis_label = "relative L2 error"
    # On SmolLM2 at 4K a mean per-layer error of 7% kept perplexity within 5%.
    default_max_error = 0.07


class ModelObjective(Objective):
    """The KL divergence of the final logits of a prefill with the trial's profile against the
    full-attention logits cached at capture time."""

    name = "model"
    summary = "KL of the logits vs full attention"
    error_key = "kl_divergence"
    label = "KL (nats)"
    axis_label = "KL (nats)"
    default_max_error = 0.05
    needs_model = True

    def check_calibration(self, calibration: str) -> None:
        if calibration == "synthetic":
            raise ValueError("--objective model needs real text (essays or a file): synthetic q/k/v have no logits")

    def evaluator(self, layers: LayerEvaluator, samples: Sequence[Any], *, model: Any = None,
                  device: str = "cpu") -> Evaluator:
        from .evaluate import ModelEvaluator

        if model is None:
            raise ValueError("the model objective's evaluator needs the loaded model")
        logits = ModelEvaluator(model, samples, device=device)

        def evaluate(profile: ModelAttentionProfile) -> TrialResult:
            return layers.evaluate(profile).with_extra(logits.evaluate(profile))

        return evaluate

    def layer_budget(self, max_error: float, global_metrics: TrialMetrics) -> float:
        # The budget is on the logits, which a per-layer trial does not measure layer by layer:
        # each layer may be no worse, on average, than the chosen global config.
        return float(global_metrics.rel_error)


#: Every objective, by name.
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (LayerObjective(), ModelObjective())}


def get_objective(name: str) -> Objective:
    """The objective called ``name``; `ValueError` naming the choices otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"--objective {name!r}: choose one of {', '.join(OBJECTIVES)}") from None
