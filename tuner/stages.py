"""The search at one length: stage 1 (one config for every layer) and stage 2 (per-layer alpha and
window), each an Optuna study whose trials `trials.run_trials` evaluates; the fastest feasible
trial becomes the length's profile in the store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
from sampleattn.lengths import format_length

from .options import TuneOptions, study_name
from .outcome import layer_costs
from .search_space import (
    PAPER_DEFAULT,
    PER_LAYER_MIN_GAIN,
    assign_per_layer,
    config_from_params,
    dense_choices,
    per_layer_profile,
    suggest_layer_params,
    suggest_params,
)
from .trials import STAGE_PARAM, StudyContext, counts, enqueue, fastest, feasible, open_study, recover, run_trials

__all__ = ["LengthResult", "PerLayerSummary", "tune_length"]


@dataclass
class PerLayerSummary:
    """What stage 2 did at one length."""

    study: str
    candidates: int = 0
    overrides: int = 0
    chosen: Any = None  # the store's record of the combined trial, when it was kept
    reason: str = ""
    latency_ms: float | None = None
    error: float | None = None


@dataclass
class LengthResult:
    """The outcome at one length; ``chosen`` is the store's record (`TrialRecord`) of the trial
    whose profile was saved, from stage 1 or (study ending ``/per-layer``) stage 2."""

    length: int
    study: str
    complete: int = 0
    failed: int = 0
    interrupted: int = 0
    feasible: int = 0
    pareto: int = 0
    chosen: Any = None
    per_layer: PerLayerSummary | None = None
    seconds: float = 0.0


def _seed(options: TuneOptions, length: int) -> int:
    return (options.seed * 1_000_003 + length) % 2**31


def tune_length(ctx: StudyContext, options: TuneOptions, device: str, length: int) -> LengthResult:
    """Stage 1 at ``length`` (and stage 2 with ``--per-layer``); saves the chosen profile."""
    started = time.perf_counter()
    name = study_name(options, length, device)
    res = LengthResult(length=length, study=name)
    study = open_study(ctx, name, _seed(options, length), options.trials)
    interrupted, requeued = recover(ctx, study, name, length)
    if interrupted:
        ctx.say(f"{format_length(length)}: resumed study {name!r}; {interrupted} interrupted trial(s), "
                f"{requeued} re-queued (a trial cut before it reached a worker did no work)")
    if not study.trials:
        enqueue(study, dict(PAPER_DEFAULT))
        enqueue(study, {**PAPER_DEFAULT, "dense_below": dense_choices(length)[1]}, baseline="dense")

    def ask(trial):
        params = suggest_params(trial, length, options.selections)
        return dict(trial.params), ModelAttentionProfile(config=config_from_params(params))

    run_trials(ctx, study, name, length, options.trials, ask, desc=f"{format_length(length)} search")
    records = ctx.records(name)
    c = counts(records)
    res.complete, res.failed, res.interrupted = c["complete"], c["failed"], c["interrupted"]
    within = feasible(ctx, records)
    res.feasible = len(within)
    best = fastest(within, ctx.objective)
    if best is None:
        ctx.say(f"{format_length(length)}: no trial met the budget (error <= {ctx.budget.max_error:g}, "
                f"retained mass >= {ctx.budget.min_retained_mass:g}); no profile saved. Raise --max-error "
                "or --trials.")
        res.seconds = time.perf_counter() - started
        return res
    res.chosen = best
    base = best.config.config
    if options.per_layer and base.dense_below <= length:
        res.per_layer = _per_layer_stage(ctx, options, device, length, base, best)
        if res.per_layer.chosen is not None:
            res.chosen = res.per_layer.chosen
    metrics = res.chosen.metrics
    ctx.store.save_profile(options.model, length, res.chosen.config, run=ctx.run,
                           metrics=metrics.model_copy(update={"extra": {**metrics.extra,
                                                                         "trial": float(res.chosen.number)}}))
    res.pareto = len(ctx.store.pareto(options.model, length, run=ctx.run))
    res.seconds = time.perf_counter() - started
    return res


def _candidates(records: list[Any], base: SampleAttentionConfig) -> list[tuple[dict[str, Any], dict[int, Any]]]:
    """Stage 2's complete trials of ``base``'s sample ratio: (parameters, per-layer costs)."""
    return [(r.params, layer_costs(r.metrics.extra)) for r in records
            if r.state == "complete" and STAGE_PARAM not in r.params
            and r.config.config.sample_ratio == base.sample_ratio]


def _combined(records: list[Any], profile: ModelAttentionProfile) -> Any:
    """The last complete evaluation of the combined ``profile``, or None."""
    want = profile.model_dump(mode="json")
    done = [r for r in records if r.state == "complete" and STAGE_PARAM in r.params
            and r.config.model_dump(mode="json") == want]
    return done[-1] if done else None


def _per_layer_stage(ctx: StudyContext, options: TuneOptions, device: str, length: int,
                     base: SampleAttentionConfig, best: Any) -> PerLayerSummary:
    """Stage 2: per-layer alpha and window with the rest of ``base`` fixed; kept where it pays."""
    name = study_name(options, length, device, "per-layer")
    n_target = max(4, options.trials // 2)
    study = open_study(ctx, name, _seed(options, length) + 1, n_target)
    recover(ctx, study, name, length)
    if not study.trials:
        enqueue(study, {"alpha": base.alpha, "window_ratio": base.window_ratio})

    def ask(trial):
        params = suggest_layer_params(trial)
        return params, ModelAttentionProfile(config=config_from_params(params, base))

    run_trials(ctx, study, name, length, n_target, ask, desc=f"{format_length(length)} per-layer")
    candidates = _candidates(ctx.records(name), base)
    summary = PerLayerSummary(study=name, candidates=len(candidates))
    choice = assign_per_layer(candidates, ctx.objective.layer_budget(ctx.budget.max_error, best.metrics))
    if choice is None:
        summary.reason = "no per-layer combination meets the budget"
        return summary
    profile = per_layer_profile(base, sorted(candidates[0][1]), choice, [c[0] for c in candidates])
    summary.overrides = len(profile.layers)
    if not profile.layers:
        summary.reason = "every layer keeps the global config"
        return summary
    combined = _combined(ctx.records(name), profile)
    if combined is None:
        params = {STAGE_PARAM: "per-layer", "layers_overridden": len(profile.layers)}
        n_combined = counts(ctx.records(name), combined=True)
        run_trials(ctx, study, name, length, n_combined["complete"] + n_combined["failed"] + 1,
                   lambda trial: (params, profile), desc=f"{format_length(length)} combined", combined=True)
        combined = _combined(ctx.records(name), profile)
    if combined is None:
        summary.reason = "the per-layer profile's evaluation failed"
        return summary
    m, best_ms = combined.metrics, best.metrics.latency_ms
    summary.latency_ms, summary.error = m.latency_ms, ctx.objective.error(m)
    within = ctx.budget.feasible(summary.error, m.retained_mass_mean)
    if within and m.latency_ms < best_ms * (1 - PER_LAYER_MIN_GAIN):
        summary.chosen = combined
        summary.reason = f"{1 - m.latency_ms / best_ms:.1%} faster than the global config"
    else:
        summary.reason = ("outside the budget" if not within else
                          f"only {1 - m.latency_ms / best_ms:.1%} faster: kept the global config")
    return summary
