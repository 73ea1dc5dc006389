"""The tuning driver: Optuna asks and tells, Ray actors evaluate, the store records.

`tune(options)` runs, for each length:

1. **calibration**: the samples of that length (captured once by the driver and cached on disk
   by `CalibrationCache`, or synthetic), loaded into every worker (`WorkerPool.load`);
2. **stage 1**: an Optuna study (two objectives, error and latency, with the accuracy budget as
   constraints; seeded multi-objective TPE) whose trials the workers evaluate in parallel;
3. **stage 2** (``per_layer``): per-layer alpha and window (`objectives`), kept where it pays;
4. the **fastest feasible** profile is saved to the store (with its metrics and the run).

The driver is the only writer: of the Optuna study (RDB storage at the store's URL, tables
``studies``, ``trials``... beside the store's ``sattn_*`` tables) and of the store. Each trial is
recorded ``running`` in the store when it is sent to a worker and ``complete`` or ``failed``
when its result comes back.

**Resume**: studies are named from the model, the length, the objective, the calibration and the
device (`study_name`), the run from the model, the lengths and the same options (`run_name`).
Restarted with the same command, the driver loads the studies, marks the trials a crash left
``RUNNING`` as failed (Optuna and store), re-queues their parameters (``enqueue_trial``), copies
into the store any finished trial it had not recorded, and runs only the trials still missing:
``--trials N`` is the number of evaluated trials per length, whatever the interruptions.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
from sampleattn.lengths import format_length

from .objectives import (
    DEFAULT_MAX_ERROR,
    DEFAULT_MIN_RETAINED_MASS,
    PAPER_DEFAULT,
    PER_LAYER_MIN_GAIN,
    SELECTIONS,
    Budget,
    assign_per_layer,
    config_from_params,
    dense_choices,
    per_layer_profile,
    suggest_layer_params,
    suggest_params,
)

__all__ = ["LengthResult", "TuneError", "TuneOptions", "TuneReport", "run_name", "study_name", "tune"]

SAMPLER_NAME = "TPESampler(multivariate=True), constrained"


class TuneError(RuntimeError):
    """A tuning run cannot go on; the message says why and what to do (exit code 1)."""


class TuneUsageError(ValueError):
    """Options that cannot work together (exit code 2)."""


@dataclass
class TuneOptions:
    """Everything `tune` needs (the CLI's options; see docs/tuner.md).

    Attributes:
        model: catalogue name. lengths: tokens per length to tune.
        trials: evaluated trials per length (stage 1); stage 2 runs ``max(4, trials // 2)``.
        max_error: accuracy budget in the objective's terms (default `DEFAULT_MAX_ERROR`).
        min_retained_mass: floor on the mean retained attention mass.
        per_layer: run stage 2. store: store URL or path (default: the store's default).
        ray_address: join this Ray cluster instead of starting a local one.
        workers: number of Ray actors (default: one per GPU; on the CPU, 2 or fewer).
        device: ``cuda``, ``cpu`` or None (cuda when available).
        calibration: ``essays``, ``synthetic`` or a text file (.txt / .jsonl).
        samples: calibration samples per length. model_path: where the weights are.
        objective: ``layer`` or ``model``. plot: PNG path of the Pareto fronts. seed: sampler,
            calibration windows and row subsets.
        layers: evaluate only these layer indices (debugging, quick runs).
        rows_per_layer: rows per (sample, layer) for the error (default 64 on the CPU, 256 on a GPU).
        cache_dir: calibration cache folder (default `default_cache_root`).
        progress: show progress bars.
        selections: the selection rules the search may choose (``sampled``, ``rescored``).
    """

    model: str
    lengths: list[int]
    trials: int = 20
    max_error: float | None = None
    min_retained_mass: float = DEFAULT_MIN_RETAINED_MASS
    per_layer: bool = False
    store: str | None = None
    ray_address: str | None = None
    workers: int | None = None
    device: str | None = None
    calibration: str = "essays"
    samples: int = 2
    model_path: str | None = None
    objective: str = "layer"
    plot: str | None = None
    seed: int = 0
    layers: list[int] | None = None
    rows_per_layer: int | None = None
    cache_dir: str | None = None
    selections: tuple[str, ...] = ("sampled",)
    progress: bool = True


@dataclass
class LengthResult:
    """The outcome at one length."""

    length: int
    study: str
    complete: int = 0
    failed: int = 0
    interrupted: int = 0
    feasible: int = 0
    pareto: int = 0
    chosen: dict[str, Any] | None = None  # {"trial", "study", "profile", "metrics", "error"}
    per_layer: dict[str, Any] | None = None  # stage-2 summary
    seconds: float = 0.0


@dataclass
class TuneReport:
    """What `tune` returns: the run's name, the store's URL and one `LengthResult` per length."""

    run: str
    store_url: str
    device: str
    objective: str
    max_error: float
    lengths: list[LengthResult] = field(default_factory=list)
    evaluated: int = 0
    seconds: float = 0.0
    workers: int = 0
    replaced_workers: int = 0

    @property
    def search_seconds(self) -> float:
        """Time spent in the searches (calibration capture and model loading excluded)."""
        return sum(r.seconds for r in self.lengths)

    @property
    def trials_per_hour(self) -> float:
        """Evaluated trials per hour of search: the throughput to compare across worker counts."""
        return self.evaluated / self.search_seconds * 3600 if self.search_seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------ names


def _calibration_tag(options: TuneOptions) -> str:
    if options.calibration in ("essays", "synthetic"):
        tag = options.calibration
    else:
        from sampleattn.models.text import load_calibration_file, text_fingerprint

        tag = "file-" + text_fingerprint(load_calibration_file(options.calibration))[:8]
    tag += f"-x{options.samples}"
    if options.seed:
        tag += f"-seed{options.seed}"
    return tag


def _layers_tag(layers: Sequence[int] | None) -> str:
    return "" if layers is None else "/layers=" + ",".join(str(i) for i in layers)


def _selections_tag(selections: Sequence[str]) -> str:
    # The paper's rule alone keeps the names of studies made before the option existed.
    return "" if tuple(selections) == ("sampled",) else "/selection=" + ",".join(sorted(selections))


def study_name(options: TuneOptions, length: int, device: str, stage: str | None = None) -> str:
    """The Optuna study of one length: ``model@length/objective/calibration/device[/layers=..][/per-layer]``."""
    name = (f"{options.model}@{format_length(length)}/{options.objective}/{_calibration_tag(options)}/{device}"
            f"{_layers_tag(options.layers)}{_selections_tag(options.selections)}")
    return f"{name}/{stage}" if stage else name


def run_name(options: TuneOptions, device: str) -> str:
    """The store's run: ``model/len1,len2/objective/calibration/device[/layers=..]``."""
    lengths = ",".join(format_length(n) for n in sorted(options.lengths))
    return (f"{options.model}/{lengths}/{options.objective}/{_calibration_tag(options)}/{device}"
            f"{_layers_tag(options.layers)}")


# ------------------------------------------------------------------------------------------ driver


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise TuneUsageError(f"--device {device!r}: choose cuda or cpu")
    return device


def _validate(options: TuneOptions) -> None:
    if not options.lengths:
        raise TuneUsageError("no length to tune: give --lengths, e.g. --lengths 32k,96k")
    if any(n < 64 for n in options.lengths):
        raise TuneUsageError(f"lengths must be at least 64 tokens (got {options.lengths})")
    if len(set(options.lengths)) != len(options.lengths):
        raise TuneUsageError(f"--lengths lists a length twice ({options.lengths})")
    if options.trials < 1:
        raise TuneUsageError(f"--trials must be at least 1 (got {options.trials})")
    if options.samples < 1:
        raise TuneUsageError(f"--samples must be at least 1 (got {options.samples})")
    if options.workers is not None and options.workers < 1:
        raise TuneUsageError(f"--workers must be at least 1 (got {options.workers})")
    if options.objective not in ("layer", "model"):
        raise TuneUsageError(f"--objective {options.objective!r}: choose layer or model")
    if options.objective == "model" and options.calibration == "synthetic":
        raise TuneUsageError("--objective model needs real text (essays or a file): synthetic q/k/v have no logits")
    if not options.selections or set(options.selections) - set(SELECTIONS) \
            or len(set(options.selections)) != len(options.selections):
        raise TuneUsageError(f"--selection {','.join(options.selections)!r}: give one or more of "
                             f"{', '.join(SELECTIONS)}, each once")
    if options.max_error is not None and not options.max_error > 0:
        raise TuneUsageError(f"--max-error must be positive (got {options.max_error})")
    if options.calibration not in ("essays", "synthetic") and not os.path.isfile(options.calibration):
        raise TuneUsageError(
            f"--calibration {options.calibration!r} is neither essays, synthetic nor an existing text file"
        )


def _calibration_text(options: TuneOptions) -> tuple[str, str]:
    """(text, source label) of a real calibration."""
    from sampleattn.models.text import essays_text, load_calibration_file

    if options.calibration == "essays":
        try:
            return essays_text(), "essays"
        except FileNotFoundError as exc:
            raise TuneError(str(exc)) from None
    return load_calibration_file(options.calibration), f"file:{os.path.basename(options.calibration)}"


def _init_ray(options: TuneOptions, out: TextIO | None) -> bool:
    """Start or join Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if options.ray_address:
        try:
            ray.init(address=options.ray_address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ConnectionError and friends
            raise TuneError(f"cannot join the Ray cluster at {options.ray_address}: {exc}") from None
    else:
        ray.init(object_store_memory=512 * 1024**2, **kwargs)
    _say(out, f"ray: {'joined ' + options.ray_address if options.ray_address else 'local cluster'}, "
              f"{ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
    return True


def _worker_count(options: TuneOptions, device: str) -> tuple[int, int]:
    """(actors, CPUs per actor) for this cluster."""
    import ray

    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    if device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise TuneError("--device cuda but the Ray cluster has no GPU: use --device cpu, or join a GPU cluster")
        n = options.workers or gpus
        if n > gpus:
            raise TuneError(f"--workers {n} GPU actors but the Ray cluster has {gpus} GPUs")
        return n, max(1, min(4, cpus // n))
    n = options.workers or max(1, min(2, cpus))
    if n > cpus:
        raise TuneError(f"--workers {n} CPU actors but the Ray cluster has {cpus} CPUs")
    return n, max(1, cpus // n)


@dataclass
class _Ctx:
    """The driver's state shared by the stages of one run."""

    options: TuneOptions
    store: Any
    run: Any
    pool: Any
    storage: Any
    budget: Budget
    device: str
    out: TextIO | None
    inject: dict[str, set[int]]
    evaluated: int = 0


def _objective_error(options: TuneOptions, result: dict[str, Any]) -> float:
    return float(result["extra"]["kl_divergence"]) if options.objective == "model" else float(result["rel_error"])


def _make_sampler(ctx: _Ctx, seed: int, n_target: int):
    """Seeded multi-objective TPE; the budget reaches it through ``trial.set_constraint``."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          n_startup_trials=min(10, max(4, n_target // 3)))


def _open_study(ctx: _Ctx, name: str, seed: int, n_target: int):
    import optuna

    return optuna.create_study(
        study_name=name, storage=ctx.storage, directions=["minimize", "minimize"],
        sampler=_make_sampler(ctx, seed, n_target), load_if_exists=True,
    )


def _store_state(state) -> str:
    return {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "pruned"}.get(state.name, "running")


def _record(ctx: _Ctx, frozen, name: str, length: int) -> None:
    """Write an Optuna trial to the store (idempotent upsert on run, study and number)."""
    attrs = frozen.user_attrs
    params = ({k: v for k, v in frozen.params.items()} or dict(attrs.get("fixed_params", {}))
              or dict(frozen.system_attrs.get("fixed_params", {})))
    ctx.store.record_trial(
        ctx.run, frozen.number, seq_len=length, state=_store_state(frozen.state), params=params,
        config=attrs.get("profile"), metrics=attrs.get("metrics"), worker=attrs.get("worker"),
        device=attrs.get("device"), duration_s=attrs.get("duration_s"), error_message=attrs.get("fail_reason"),
        study=name,
    )


def _recover(ctx: _Ctx, study, name: str, length: int) -> tuple[int, int]:
    """Resume: fail the trials left RUNNING and re-queue those that had gone to a worker; copy
    unrecorded finished trials to the store. Returns (trials failed as interrupted, re-queued)."""
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001 - the public BaseStorage API of this study
    recorded = {t.number: t.state for t in ctx.store.trials(ctx.run, study=name)}
    interrupted = requeued = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING:
            reason = "interrupted: the tuning driver stopped before the trial finished"
            # The driver sets the "profile" attribute once `ask` has sampled every parameter,
            # just before the trial goes to a worker. A trial killed before that did no work and
            # may hold only some of its parameters: re-queueing those would make a different
            # trial (the rest sampled anew). If it was an enqueued one (the paper's default, the
            # dense baseline, an earlier re-queue), its whole set still waits in Optuna's
            # "fixed_params" and must not be lost; a sampled one is simply proposed again.
            if "profile" in t.user_attrs:
                params = dict(t.params)
            else:
                params = dict(t.system_attrs.get("fixed_params", {}))
            if params and not t.user_attrs.get("combined"):
                keep = {k: t.user_attrs[k] for k in ("baseline",) if k in t.user_attrs}
                study.enqueue_trial(params, user_attrs={**keep, "requeued_from": t.number})
                reason += "; its parameters were re-queued"
                requeued += 1
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # noqa: SLF001
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)  # noqa: SLF001
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
            _record(ctx, storage.get_trial(t._trial_id), name, length)  # noqa: SLF001
            interrupted += 1
        elif t.state.is_finished() and recorded.get(t.number) != _store_state(t.state):
            _record(ctx, t, name, length)
    return interrupted, requeued


def _counts(study, *, combined: bool = False) -> dict[str, int]:
    from optuna.trial import TrialState

    c = {"complete": 0, "failed": 0, "interrupted": 0}
    for t in study.get_trials(deepcopy=False):
        if bool(t.user_attrs.get("combined")) != combined:
            continue
        if t.state == TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == TrialState.FAIL:
            c["interrupted" if t.user_attrs.get("interrupted") else "failed"] += 1
    return c


def _run_trials(
    ctx: _Ctx, study, name: str, length: int, n_target: int,
    ask: Callable[[Any], tuple[dict[str, Any], ModelAttentionProfile]], *, desc: str, combined: bool = False,
) -> None:
    """Evaluate trials until ``n_target`` (complete + failed, interrupted not counted) are done."""
    import ray
    from ray.exceptions import RayActorError, RayError
    from tqdm.auto import tqdm

    counts = _counts(study, combined=combined)
    done = counts["complete"] + counts["failed"]
    to_launch = max(0, n_target - done)
    if to_launch == 0:
        return
    pool = ctx.pool
    idle = list(range(len(pool)))
    pending: dict[Any, tuple[Any, int, ModelAttentionProfile]] = {}
    bar = tqdm(total=n_target, initial=min(done, n_target), desc=desc, unit="trial", disable=not ctx.options.progress,
               file=sys.stderr, dynamic_ncols=True)
    best: float | None = None
    try:
        while to_launch > 0 or pending:
            while idle and to_launch > 0:
                index = idle.pop(0)
                trial = study.ask()
                params, profile = ask(trial)
                profile_json = profile.model_dump(mode="json")
                trial.set_user_attr("profile", profile_json)
                if combined:
                    trial.set_user_attr("combined", True)
                    trial.set_user_attr("fixed_params", params)
                ctx.store.record_trial(ctx.run, trial.number, seq_len=length, state="running",
                                       params=params if combined else dict(trial.params), config=profile,
                                       worker=pool.name(index), study=name)
                inject = ("crash" if trial.number in ctx.inject["crash"] else
                          "fail" if trial.number in ctx.inject["fail"] else None)
                ref = pool.actors[index].evaluate.remote(trial.number, profile_json, inject=inject)
                pending[ref] = (trial, index, profile)
                to_launch -= 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            trial, index, profile = pending.pop(ref)
            try:
                out = ray.get(ref)
            except RayActorError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out = {"ok": False, "error": f"worker {pool.name(index)} died ({first}); it was replaced",
                       "worker": pool.name(index)}
                pool.replace(index)
            except RayError as exc:  # the task was lost, not the worker: fail the trial, go on
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out = {"ok": False, "error": f"{type(exc).__name__}: {first}", "worker": pool.name(index)}
            trial.set_user_attr("worker", out.get("worker"))
            if out.get("device"):
                trial.set_user_attr("device", out["device"])
            if out.get("duration_s") is not None:
                trial.set_user_attr("duration_s", float(out["duration_s"]))
            if out["ok"]:
                result = out["result"]
                error = _objective_error(ctx.options, result)
                from .evaluate import LayerMetrics, TrialResult

                layers = {int(k): LayerMetrics(**v) for k, v in result["layers"].items()}
                tr = TrialResult(**{**result, "layers": layers})
                trial.set_user_attr("metrics", tr.store_metrics())
                trial.set_user_attr("objective_error", error)
                trial.set_user_attr("layers", {str(k): [m.rel_error, m.latency_ms] for k, m in layers.items()})
                c_error, c_mass = ctx.budget.constraints(error, result["retained_mass_mean"])
                trial.set_constraint("error", c_error)  # <= 0: within the budget
                trial.set_constraint("retained_mass", c_mass)
                study.tell(trial, [error, float(result["latency_ms"])])
                if ctx.budget.feasible(error, result["retained_mass_mean"]):
                    best = result["latency_ms"] if best is None else min(best, result["latency_ms"])
            else:
                trial.set_user_attr("fail_reason", out["error"])
                from optuna.trial import TrialState

                study.tell(trial, state=TrialState.FAIL)
                bar.write(f"trial {trial.number} failed: {out['error']}")
            _record(ctx, study._storage.get_trial(trial._trial_id), name, length)  # noqa: SLF001
            ctx.evaluated += 1
            idle.append(index)
            bar.update(1)
            if best is not None:
                bar.set_postfix_str(f"fastest feasible {best:.3g} ms")
    finally:
        bar.close()


def _feasible_trials(ctx: _Ctx, study, *, combined: bool | None = False) -> list[Any]:
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if combined is not None and bool(t.user_attrs.get("combined")) != combined:
            continue
        if ctx.budget.feasible(t.user_attrs["objective_error"], t.user_attrs["metrics"]["retained_mass_mean"]):
            out.append(t)
    return out


def _fastest(trials: Sequence[Any]):
    return min(trials, key=lambda t: (t.values[1], t.values[0], t.number)) if trials else None


def _chosen(t, name: str) -> dict[str, Any]:
    return {"trial": t.number, "study": name, "profile": t.user_attrs["profile"], "metrics": t.user_attrs["metrics"],
            "error": t.user_attrs["objective_error"], "latency_ms": t.values[1]}


def _tune_length(ctx: _Ctx, length: int, index: int) -> LengthResult:
    options = ctx.options
    started = time.perf_counter()
    name = study_name(options, length, ctx.device)
    res = LengthResult(length=length, study=name)
    seed = (options.seed * 1_000_003 + length) % 2**31
    study = _open_study(ctx, name, seed, options.trials)
    interrupted, requeued = _recover(ctx, study, name, length)
    if interrupted:
        _say(ctx.out, f"{format_length(length)}: resumed study {name!r}; {interrupted} interrupted trial(s), "
                      f"{requeued} re-queued (a trial cut before it reached a worker did no work)")
    if not study.trials:
        study.enqueue_trial(dict(PAPER_DEFAULT))
        study.enqueue_trial({**PAPER_DEFAULT, "dense_below": dense_choices(length)[1]},
                            user_attrs={"baseline": "dense"})

    def ask(trial):
        params = suggest_params(trial, length, options.selections)
        return params, ModelAttentionProfile(config=config_from_params(params))

    _run_trials(ctx, study, name, length, options.trials, ask, desc=f"{format_length(length)} search")
    counts = _counts(study)
    res.complete, res.failed, res.interrupted = counts["complete"], counts["failed"], counts["interrupted"]
    feasible = _feasible_trials(ctx, study)
    res.feasible = len(feasible)
    best = _fastest(feasible)
    if best is None:
        _say(ctx.out, f"{format_length(length)}: no trial met the budget (error <= {ctx.budget.max_error:g}, "
                      f"retained mass >= {ctx.budget.min_retained_mass:g}); no profile saved. Raise --max-error "
                      "or --trials.")
        res.seconds = time.perf_counter() - started
        return res
    res.chosen = _chosen(best, name)
    base = SampleAttentionConfig.model_validate(best.user_attrs["profile"]["config"])
    if options.per_layer and base.dense_below <= length:
        res.per_layer = _per_layer_stage(ctx, length, base, best, seed)
        if res.per_layer.get("chosen"):
            res.chosen = res.per_layer["chosen"]
    ctx.store.save_profile(options.model, length, res.chosen["profile"], run=ctx.run,
                           metrics={**res.chosen["metrics"],
                                    "extra": {**res.chosen["metrics"].get("extra", {}),
                                              "trial": float(res.chosen["trial"])}})
    res.pareto = len(ctx.store.pareto(options.model, length, run=ctx.run))
    res.seconds = time.perf_counter() - started
    return res


def _per_layer_stage(ctx: _Ctx, length: int, base: SampleAttentionConfig, best, seed: int) -> dict[str, Any]:
    """Stage 2: per-layer alpha and window with the rest of ``base`` fixed; kept where it pays."""
    options = ctx.options
    name = study_name(options, length, ctx.device, "per-layer")
    n_target = max(4, options.trials // 2)
    study = _open_study(ctx, name, seed + 1, n_target)
    _recover(ctx, study, name, length)
    if not study.trials:
        study.enqueue_trial({"alpha": base.alpha, "window_ratio": base.window_ratio})

    def ask(trial):
        params = suggest_layer_params(trial)
        return params, ModelAttentionProfile(config=config_from_params(params, base))

    _run_trials(ctx, study, name, length, n_target, ask, desc=f"{format_length(length)} per-layer")
    from optuna.trial import TrialState

    candidates = [
        (t.params, {int(k): (float(v[0]), float(v[1])) for k, v in t.user_attrs["layers"].items()})
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not t.user_attrs.get("combined")
        and t.user_attrs["profile"]["config"]["sample_ratio"] == base.sample_ratio
    ]
    summary: dict[str, Any] = {"study": name, "candidates": len(candidates), "chosen": None, "overrides": 0}
    # The budget on the mean layer error: the objective's own for "layer"; for "model" (KL),
    # no worse than the global config's mean layer error.
    budget = ctx.budget.max_error if options.objective == "layer" else best.user_attrs["metrics"]["rel_error"]
    choice = assign_per_layer(candidates, budget)
    if choice is None:
        summary["reason"] = "no per-layer combination meets the budget"
        return summary
    layers = sorted(candidates[0][1])
    profile = per_layer_profile(base, layers, choice, [c[0] for c in candidates])
    summary["overrides"] = len(profile.layers)
    if not profile.layers:
        summary["reason"] = "every layer keeps the global config"
        return summary
    want = profile.model_dump(mode="json")
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("combined") and t.user_attrs.get("profile") == want]
    if not done:
        params = {"stage": "per-layer", "layers_overridden": len(profile.layers)}
        n_combined = _counts(study, combined=True)
        _run_trials(ctx, study, name, length, n_combined["complete"] + n_combined["failed"] + 1,
                    lambda trial: (params, profile), desc=f"{format_length(length)} combined", combined=True)
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("combined") and t.user_attrs.get("profile") == want]
    if not done:
        summary["reason"] = "the per-layer profile's evaluation failed"
        return summary
    t = done[-1]
    summary["latency_ms"], summary["error"] = t.values[1], t.values[0]
    feasible = ctx.budget.feasible(t.user_attrs["objective_error"], t.user_attrs["metrics"]["retained_mass_mean"])
    if feasible and t.values[1] < best.values[1] * (1 - PER_LAYER_MIN_GAIN):
        summary["chosen"] = _chosen(t, name)
        summary["reason"] = f"{1 - t.values[1] / best.values[1]:.1%} faster than the global config"
    else:
        summary["reason"] = ("outside the budget" if not feasible else
                             f"only {1 - t.values[1] / best.values[1]:.1%} faster: kept the global config")
    return summary


def _capture(options: TuneOptions, spec, device: str, model, tokenizer, out: TextIO | None):
    """Samples per length, and the run's calibration info and attributes."""
    from sampleattn.models.calibration import CalibrationCache
    from sampleattn.models.samples import synthetic_calibration
    from sampleattn.models.text import text_fingerprint

    samples: dict[int, list[Any]] = {}
    attrs: dict[str, Any] = {}
    if options.calibration == "synthetic":
        for length in options.lengths:
            samples[length] = synthetic_calibration(spec, length, options.samples, options.seed)
        info = {"kind": "synthetic", "source": "synthetic", "fingerprint": None, "samples": options.samples}
        return samples, info, attrs
    text, source = _calibration_text(options)
    import torch

    from sampleattn.models.loading import load_info, load_model

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
    return samples, info, attrs


def tune(options: TuneOptions, *, model: Any = None, tokenizer: Any = None, out: TextIO | None = sys.stdout) -> TuneReport:
    """Run the search of `TuneOptions` and write everything to the store; returns a `TuneReport`.

    ``model``/``tokenizer``: an already loaded catalogue model to capture the calibration with
    (tests pass the session's SmolLM2); otherwise it is loaded from ``options.model_path``, the
    Hugging Face cache or its package.

    Raises:
        UnknownModelError: the model is not in the catalogue (CLI exit 2).
        TuneUsageError: inconsistent options (exit 2).
        ModelNotAvailableError: the weights are not on this machine (exit 1), raised before
            anything slow starts.
        TuneError, StoreError: the run cannot go on (exit 1).
    """
    from sampleattn.store import ProfileStore
    from sampleattn.store.schemas import search_space_from_distributions

    from sampleattn.models.catalog import get_model_spec
    from sampleattn.models.loading import resolve_model_source

    started = time.perf_counter()
    spec = get_model_spec(options.model)
    options.model = spec.name
    _validate(options)
    device = _resolve_device(options.device)
    if options.layers is not None:
        bad = [i for i in options.layers if not 0 <= i < spec.num_layers]
        if bad or not options.layers:
            raise TuneUsageError(f"--layers {bad or options.layers}: {spec.name} has layers 0..{spec.num_layers - 1}")
    if options.rows_per_layer is None:
        options.rows_per_layer = 256 if device == "cuda" else 64
    max_error = options.max_error if options.max_error is not None else DEFAULT_MAX_ERROR[options.objective]
    if options.calibration != "synthetic" and model is None:
        resolve_model_source(spec, model_path=options.model_path)  # ModelNotAvailableError, at once
    if options.calibration != "synthetic":
        _calibration_text(options)  # missing essays / unreadable file: fail before anything slow
    if device == "cuda":
        import torch

        if not torch.cuda.is_available() and not options.ray_address:
            raise TuneUsageError("--device cuda but this machine has no CUDA GPU: use --device cpu")

    store = ProfileStore(options.store)
    _say(out, f"store: {store.url}")
    started_ray = False
    pool = None
    run = None
    try:
        store.register_model(name=spec.name, hf_id=spec.hf_id, family=spec.family, num_layers=spec.num_layers,
                             num_q_heads=spec.num_q_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                             trained_context=spec.trained_context)
        samples, calibration, attrs = _capture(options, spec, device, model, tokenizer, out)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        probe = optuna.create_study(directions=["minimize", "minimize"])
        distributions = {}
        # one probe per rule: each asks its rule's parameters, so the recorded space is complete
        for selection in options.selections:
            if len(options.selections) > 1:
                probe.enqueue_trial({"selection": selection})
            t = probe.ask()
            t.set_user_attr("baseline", "dense")
            suggest_params(t, options.lengths[0], options.selections)
            distributions.update(t.distributions)
        search_space = {k: v.model_dump(mode="json") for k, v in search_space_from_distributions(distributions).items()}
        search_space["dense_below"] = {"kind": "categorical", "choices": ["0", "2 * length"]}
        from sampleattn.env import collect_env

        env = collect_env()
        name = run_name(options, device)
        run = store.start_run(
            spec.name, name=name, lengths=options.lengths, objective=options.objective, calibration=calibration,
            max_error=max_error, min_retained_mass=options.min_retained_mass, search_space=search_space,
            sampler=SAMPLER_NAME, seed=options.seed, env=env, device=env.get("device") if device == "cuda" else "cpu",
            attrs={**attrs, "layers": options.layers, "rows_per_layer": options.rows_per_layer,
                   "per_layer": options.per_layer, "trials": options.trials,
                   "latency": "measured (CUDA events)" if device == "cuda" else "estimated (analytic, CPU)"},
            resume=True,
        )
        _say(out, f"run: {name}")
        started_ray = _init_ray(options, out)
        n_workers, cpus = _worker_count(options, device)
        from .workers import WorkerPool, injected_failures

        pool = WorkerPool(n_workers, device, cpus_per_worker=cpus)
        _say(out, f"workers: {n_workers} {'GPU' if device == 'cuda' else 'CPU'} actor(s)"
                  + (f", {cpus} CPU thread(s) each" if device == "cpu" else ""))
        storage = optuna.storages.RDBStorage(store.url, engine_kwargs={"connect_args": {"timeout": 60}}
                                             if store.url.startswith("sqlite") else {})
        ctx = _Ctx(options=options, store=store, run=run, pool=pool, storage=storage,
                   budget=Budget(max_error, options.min_retained_mass), device=device, out=out,
                   inject=injected_failures())
        report = TuneReport(run=name, store_url=store.url, device=device, objective=options.objective,
                            max_error=max_error, workers=n_workers)
        model_load = None
        if options.objective == "model":
            model_load = {"spec": spec.name, "model_path": options.model_path, "max_length": max(options.lengths)}
        for index, length in enumerate(sorted(options.lengths)):
            load_started = time.perf_counter()
            pool.load(length, samples[length], layers=options.layers, rows_per_layer=options.rows_per_layer,
                      seed=options.seed, objective=options.objective, model_load=model_load)
            _say(out, f"{format_length(length)}: calibration loaded into {len(pool)} worker(s) "
                      f"in {time.perf_counter() - load_started:.1f} s")
            report.lengths.append(_tune_length(ctx, length, index))
        report.evaluated = ctx.evaluated
        report.replaced_workers = pool.replaced
        report.seconds = time.perf_counter() - started
        store.finish_run(run, "complete")
        return report
    except KeyboardInterrupt:
        if run is not None:
            store.finish_run(run, "interrupted")
        raise
    except BaseException:
        if run is not None:
            try:
                store.finish_run(run, "failed")
            except Exception:  # noqa: BLE001 - keep the first error
                pass
        raise
    finally:
        if pool is not None:
            pool.shutdown()
        if started_ray:
            import ray

            ray.shutdown()
        store.close()


def chosen_summary(report: TuneReport) -> list[dict[str, Any]]:
    """One row per length for the summary table (plain values; ``None`` for the sparse parameters
    of a dense choice)."""
    from sampleattn.store.display import is_dense, selection_mode, sparse_params

    rows = []
    for r in report.lengths:
        row: dict[str, Any] = {"length": format_length(r.length), "trials": r.complete, "failed": r.failed,
                               "feasible": r.feasible, "pareto": r.pareto}
        if r.chosen is not None:
            cfg = r.chosen["profile"]["config"]
            m = r.chosen["metrics"]
            dense = is_dense(cfg, r.length)
            alpha, window, sample = sparse_params(cfg, dense)
            row.update({
                "chosen": f"#{r.chosen['trial']}" + ("*" if r.chosen["study"].endswith("/per-layer") else ""),
                "alpha": alpha, "window": window, "sample": sample,
                "gqa": None if dense else cfg["gqa_granularity"], "mode": selection_mode(cfg, dense),
                "layers": len(r.chosen["profile"].get("layers", {})),
                "error": r.chosen["error"], "density": m.get("density"),
                "latency_ms": m.get("latency_ms"), "dense_ms": m.get("dense_latency_ms"),
                "speedup": (m["dense_latency_ms"] / m["latency_ms"]) if m.get("latency_ms") else None,
            })
        rows.append(row)
    return rows
