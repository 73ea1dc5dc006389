"""The search problem: search space, objectives, accuracy budget, and how a profile is chosen.

Stage 1 (one Optuna study per model and length) searches one configuration for every layer:

=================  ===========================================  =======================
parameter          range                                        Optuna distribution
=================  ===========================================  =======================
alpha              [0.8, 0.995]                                 float
window_ratio       [0.005, 0.15]                                float, log
sample_ratio       [0.005, 0.1]                                 float, log
gqa_granularity    ``query_head``, ``kv_head``                  categorical
dense_below        ``0`` (sparse) or ``2 * length`` (dense)     categorical
selection          the ``--selection`` choices (default          categorical
                   ``sampled`` only: then not asked)
(the rule's own)   what the chosen rule's ``suggest`` asks:     (asked of that rule's
                   rescored: candidate_share [0.5, 0.99]        trials only)
                   (``candidate_alpha = alpha + share * (1 -
                   alpha)``), rescore_stride 1, 2, 4, 8; block:
                   beta [0.8, 0.998], key_block 64 or 128,
                   row_stride 1, 2, 4, share_power 1 or 2,
                   stripes yes or no, and with stripes
                   max_stripes 64, 256 or none
=================  ===========================================  =======================

``dense_below`` only decides whether the profile runs dense at its length: any value up to the
length gives sparse attention and any value above it dense, so its two choices are ``0`` and
twice the length (dense over the whole bucket the profile serves). The dense choice does not
depend on the other parameters (error 0, the latency of dense attention), so it is evaluated
once, as an enqueued baseline trial, and the sampled trials are the sparse ones
(``dense_below = 0``): the same search as a categorical parameter, without spending half the
trials on one point. The dense trial is the zero-error end of the Pareto front, and the
profile chosen where sparse attention does not pay.

Two objectives, both minimised: the error (in the terms of the run's `Objective`:
``layer``, mean over layers of the relative L2 error of the attention output; ``model``, KL
divergence of the final logits, nats per token) and the latency (ms of the attention of one prefill, summed over layers). The accuracy budget is a
constraint (``Trial.set_constraint``, which Optuna 5's samplers read; a value <= 0 is feasible):

    error - max_error <= 0    and    min_retained_mass - retained_mass_mean <= 0

The chosen profile is the **fastest feasible** trial (ties: the lower error).

Stage 2 (``--per-layer``) keeps sample_ratio, gqa_granularity and dense_below of the chosen
config and searches (alpha, window_ratio), each trial applied to all layers; every trial gives
each layer's error and latency, and `assign_per_layer` then picks per layer the candidate that
minimises the total latency under the budget (a Lagrangian relaxation of the multiple-choice
knapsack). The combination is evaluated as one more trial and kept only where it pays (at least
2% faster than the global config and within the budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sampleattn.config import LayerOverride, ModelAttentionProfile, SampleAttentionConfig
from sampleattn.rules import RULES

__all__ = [
    "DEFAULT_MIN_RETAINED_MASS",
    "PAPER_DEFAULT",
    "SELECTIONS",
    "Budget",
    "assign_per_layer",
    "config_from_params",
    "per_layer_profile",
    "suggest_params",
    "suggest_layer_params",
]

#: Floor on the mean retained attention mass of the sampled rows (the paper's fast variant
#: uses alpha = 0.80).
DEFAULT_MIN_RETAINED_MASS = 0.8

#: The paper's setting (method.md section 5), enqueued as every study's first trial.
PAPER_DEFAULT = {"alpha": 0.95, "window_ratio": 0.08, "sample_ratio": 0.05, "gqa_granularity": "query_head"}

ALPHA = (0.8, 0.995)
WINDOW_RATIO = (0.005, 0.15)
SAMPLE_RATIO = (0.005, 0.1)
GQA = ("query_head", "kv_head")
SELECTIONS = tuple(RULES)

#: Stage 2 must be at least this much faster than the global config to be kept.
PER_LAYER_MIN_GAIN = 0.02


@dataclass(frozen=True)
class Budget:
    """The accuracy budget: ``error <= max_error`` and ``retained_mass_mean >= min_retained_mass``."""

    max_error: float
    min_retained_mass: float

    def constraints(self, error: float, retained_mass_mean: float) -> list[float]:
        """Optuna constraint values (<= 0 means satisfied)."""
        return [error - self.max_error, self.min_retained_mass - retained_mass_mean]

    def feasible(self, error: float, retained_mass_mean: float) -> bool:
        return all(c <= 0 for c in self.constraints(error, retained_mass_mean))


def dense_choices(length: int) -> list[int]:
    """The two values of ``dense_below`` searched at ``length``: 0 (sparse) and 2 * length (dense)."""
    return [0, 2 * int(length)]


def suggest_params(trial: Any, length: int, selections: Sequence[str] = ("sampled",)) -> dict[str, Any]:
    """Ask an Optuna trial for the stage-1 parameters (see the module docstring).

    ``dense_below`` is asked only of the dense baseline (enqueued with the user attribute
    ``baseline="dense"``); the other trials are sparse (``dense_below = 0``). ``selection`` is
    asked only when ``selections`` offers more than one rule; the rule's own parameters (its
    ``suggest``) only of trials of that rule.
    """
    params = {
        "alpha": trial.suggest_float("alpha", *ALPHA),
        "window_ratio": trial.suggest_float("window_ratio", *WINDOW_RATIO, log=True),
        "sample_ratio": trial.suggest_float("sample_ratio", *SAMPLE_RATIO, log=True),
        "gqa_granularity": trial.suggest_categorical("gqa_granularity", list(GQA)),
    }
    selection = selections[0] if len(selections) == 1 else trial.suggest_categorical("selection", list(selections))
    if selection != SampleAttentionConfig.model_fields["selection"].default_factory().name:
        # the default rule's trials stay as they were before rules had parameters (no key)
        params["selection"] = selection
        params.update(RULES[selection].suggest(trial, params))
    if trial.user_attrs.get("baseline") == "dense":
        params["dense_below"] = trial.suggest_categorical("dense_below", dense_choices(length))
    else:
        params["dense_below"] = 0
    return params


def suggest_layer_params(trial: Any) -> dict[str, Any]:
    """Ask an Optuna trial for the stage-2 parameters: alpha and window_ratio."""
    return {
        "alpha": trial.suggest_float("alpha", *ALPHA),
        "window_ratio": trial.suggest_float("window_ratio", *WINDOW_RATIO, log=True),
    }


def config_from_params(params: Mapping[str, Any], base: SampleAttentionConfig | None = None) -> SampleAttentionConfig:
    """A `SampleAttentionConfig` from trial parameters (missing ones from ``base``).

    Trial parameters are flat: the rule's name in ``selection`` and its parameters beside the
    common ones. Parameters of the base's rule that the trial does not give keep the base's
    values; a trial that moves alpha alone moves the rule with it (`SelectionRule.for_alpha`,
    as layer overrides do)."""
    base = base or SampleAttentionConfig()
    common = ("alpha", "window_ratio", "sample_ratio", "gqa_granularity", "dense_below")
    known = {k: params[k] for k in common if k in params}
    rule = base.selection
    if "selection" in params and params["selection"] != rule.name:
        rule = RULES[params["selection"]]()
    elif "alpha" in known:
        rule = rule.for_alpha(base.alpha, known["alpha"])
    owned = {k: params[k] for k in type(rule).model_fields if k != "name" and k in params}
    if owned:
        rule = type(rule).model_validate({**dict(rule), **owned})
    if not known and rule == base.selection:
        return base
    # validated, not just copied: the combination must hold (e.g. candidate_alpha >= alpha)
    return SampleAttentionConfig.model_validate({**dict(base), **known, "selection": rule})


def assign_per_layer(
    candidates: Sequence[tuple[Mapping[str, float], Mapping[int, tuple[float, float]]]],
    max_mean_error: float,
) -> list[int] | None:
    """Pick one candidate per layer: least total latency with mean error <= ``max_mean_error``.

    Args:
        candidates: per candidate, its parameters and ``{layer: (error, latency_ms)}`` (every
            candidate must cover the same layers).
        max_mean_error: the budget on the mean over layers of the error.
    Returns:
        For each layer (in sorted order) the index of its candidate, or None when no
        combination meets the budget. Solved by a Lagrangian relaxation: for each multiplier
        ``lam`` every layer takes ``argmin latency + lam * error``; the fastest combination
        within the budget over a log-spaced sweep of ``lam`` is returned.
    """
    if not candidates:
        return None
    layers = sorted(candidates[0][1])
    n = len(layers)
    scale = sum(candidates[0][1][l][1] for l in layers) / max(n, 1) or 1.0
    best: tuple[float, list[int]] | None = None
    for step in range(241):
        lam = scale * 10 ** (-4 + step * 0.05)  # 1e-4 .. 1e8 times the mean layer latency
        choice = [min(range(len(candidates)), key=lambda c: candidates[c][1][l][1] + lam * candidates[c][1][l][0])
                  for l in layers]
        error = sum(candidates[c][1][l][0] for c, l in zip(choice, layers)) / n
        latency = sum(candidates[c][1][l][1] for c, l in zip(choice, layers))
        if error <= max_mean_error + 1e-12 and (best is None or latency < best[0]):
            best = (latency, choice)
    return best[1] if best is not None else None


def per_layer_profile(
    base: SampleAttentionConfig, layers: Sequence[int], choice: Sequence[int], candidates: Sequence[Mapping[str, float]]
) -> ModelAttentionProfile:
    """The profile with ``base`` as global config and per-layer (alpha, window_ratio) overrides.

    A layer whose chosen candidate equals the base's values gets no override.
    """
    overrides: dict[int, LayerOverride] = {}
    for layer, c in zip(layers, choice):
        alpha, window = float(candidates[c]["alpha"]), float(candidates[c]["window_ratio"])
        if math.isclose(alpha, base.alpha) and math.isclose(window, base.window_ratio):
            continue
        overrides[layer] = LayerOverride(alpha=alpha, window_ratio=window)
    return ModelAttentionProfile(config=base, layers=overrides)
