"""Trials of one study: Optuna proposes, a worker evaluates, the driver records the outcome once.

The Optuna study (RDB storage at the store's URL) is the sampler and the resume record: it
numbers the trials, holds their parameters, objective values and constraints, and tells which
were running when the driver stopped. The store holds what each trial is and measured (its
profile, metrics, worker, failure): the driver writes a trial ``running`` when it sends it to a
worker and ``complete`` or ``failed`` when its `TrialOutcome` comes back, then tells Optuna.
Every later decision (counts, the fastest feasible trial, the per-layer candidates) reads the
store. Optuna is used through its public API only.

**Resume** (`recover`): a trial left ``RUNNING`` is failed in both; if it had reached a worker
(its store record holds a profile) its parameters are re-queued (``enqueue_trial``). A trial
killed before that did no work and may hold only some of its parameters: re-queueing those would
run a different trial, so only an enqueued one (the paper's default, the dense baseline, an
earlier re-queue, whose whole set travels in its ``enqueued_params`` user attribute) is re-queued.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sampleattn.config import ModelAttentionProfile

from .objectives import Objective
from .outcome import TrialOutcome
from .search_space import Budget

__all__ = ["INTERRUPTED", "StudyContext", "counts", "fastest", "feasible", "open_study", "recover", "run_trials"]

#: The error message of a trial the driver's stop interrupted (its start is how they are counted).
INTERRUPTED = "interrupted: the tuning driver stopped before the trial finished"

#: The user attribute of an enqueued trial holding its whole parameter set (see `recover`).
ENQUEUED = "enqueued_params"

#: The store parameter that marks the per-layer stage's combined trial (no sampled parameters).
STAGE_PARAM = "stage"

#: A trial's proposal: its parameters (as recorded) and the profile to evaluate.
Ask = Callable[[Any], tuple[dict[str, Any], ModelAttentionProfile]]


@dataclass
class StudyContext:
    """The driver's state shared by the studies of one run."""

    store: Any
    run: Any
    pool: Any
    storage_url: str
    objective: Objective
    budget: Budget
    out: TextIO | None = None
    inject: dict[str, set[int]] | None = None
    progress: bool = True
    evaluated: int = 0
    _storage: Any = None

    def storage(self) -> Any:
        """Optuna's RDB storage at the store's URL, made once for every study of the run."""
        if self._storage is None:
            import optuna

            sqlite = self.storage_url.startswith("sqlite")
            self._storage = optuna.storages.RDBStorage(
                self.storage_url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {})
        return self._storage

    def say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def records(self, study: str) -> list[Any]:
        """The store's records of one study's trials, by number."""
        return self.store.trials(self.run, study=study)


def enqueue(study: Any, params: dict[str, Any], **user_attrs: Any) -> None:
    """Queue a whole parameter set, kept in the trial's user attributes for `recover`."""
    study.enqueue_trial(params, user_attrs={**user_attrs, ENQUEUED: params})


def open_study(ctx: StudyContext, name: str, seed: int, n_target: int) -> Any:
    """Create or load the study ``name``: seeded multi-objective TPE (error, latency), the
    budget reaching it through ``trial.set_constraint``."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                             n_startup_trials=min(10, max(4, n_target // 3)))
    return optuna.create_study(study_name=name, storage=ctx.storage(), directions=["minimize", "minimize"],
                               sampler=sampler, load_if_exists=True)


def recover(ctx: StudyContext, study: Any, name: str, length: int) -> tuple[int, int]:
    """Resume: fail the trials left RUNNING, re-queue those that had reached a worker (see the
    module docstring). Returns (trials failed as interrupted, re-queued)."""
    from optuna.trial import TrialState

    recorded = {r.number: r for r in ctx.records(name)}
    interrupted = requeued = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = recorded.get(t.number)
        reached_worker = record is not None and record.config is not None
        combined = record is not None and STAGE_PARAM in record.params
        params = dict(t.params) if reached_worker else dict(t.user_attrs.get(ENQUEUED, {}))
        reason = INTERRUPTED
        if params and not combined:
            keep = {k: v for k, v in t.user_attrs.items() if k == "baseline"}
            enqueue(study, params, **keep, requeued_from=t.number)
            reason += "; its parameters were re-queued"
            requeued += 1
        ctx.store.record_trial(ctx.run, t.number, seq_len=length, state="failed",
                               params=record.params if record is not None else dict(t.params),
                               config=record.config if record is not None else None,
                               worker=record.worker if record is not None else None,
                               error_message=reason, study=name)
        study.tell(t.number, state=TrialState.FAIL)
        interrupted += 1
    return interrupted, requeued


def counts(records: Iterable[Any], *, combined: bool = False) -> dict[str, int]:
    """Complete, failed and interrupted trials among ``records`` (the combined trial of the
    per-layer stage, or the others)."""
    c = {"complete": 0, "failed": 0, "interrupted": 0}
    for r in records:
        if (STAGE_PARAM in r.params) != combined:
            continue
        if r.state == "complete":
            c["complete"] += 1
        elif r.state == "failed":
            c["interrupted" if (r.error_message or "").startswith(INTERRUPTED) else "failed"] += 1
    return c


def feasible(ctx: StudyContext, records: Iterable[Any], *, combined: bool = False) -> list[Any]:
    """The complete trials within the budget."""
    return [r for r in records if r.state == "complete" and (STAGE_PARAM in r.params) == combined
            and ctx.budget.feasible(ctx.objective.error(r.metrics), r.metrics.retained_mass_mean)]


def fastest(records: Sequence[Any], objective: Objective) -> Any:
    """The lowest latency (ties: the lower error, then the earlier trial), or None."""
    return min(records, key=lambda r: (r.metrics.latency_ms, objective.error(r.metrics), r.number)) if records else None


def _record_outcome(ctx: StudyContext, study: Any, trial: Any, name: str, length: int,
                    params: dict[str, Any], profile: ModelAttentionProfile, outcome: TrialOutcome) -> float | None:
    """Write the outcome to the store, then tell Optuna; returns the latency of a feasible trial."""
    from optuna.trial import TrialState

    metrics = outcome.result.store_metrics() if outcome.ok else None
    ctx.store.record_trial(ctx.run, trial.number, seq_len=length, state="complete" if outcome.ok else "failed",
                           params=params, config=profile, metrics=metrics, worker=outcome.worker,
                           device=outcome.device, duration_s=outcome.duration_s, error_message=outcome.error,
                           study=name)
    if metrics is None:
        study.tell(trial, state=TrialState.FAIL)
        return None
    error = ctx.objective.error(metrics)
    c_error, c_mass = ctx.budget.constraints(error, metrics.retained_mass_mean)
    trial.set_constraint("error", c_error)  # <= 0: within the budget
    trial.set_constraint("retained_mass", c_mass)
    study.tell(trial, [error, metrics.latency_ms])
    return metrics.latency_ms if ctx.budget.feasible(error, metrics.retained_mass_mean) else None


def _lost(pool: Any, index: int, exc: BaseException) -> TrialOutcome:
    """The outcome of a trial whose worker died (the worker is replaced) or whose task was lost."""
    from ray.exceptions import RayActorError

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    name = pool.name(index)
    if isinstance(exc, RayActorError):
        pool.replace(index)
        return TrialOutcome(worker=name, error=f"worker {name} died ({first}); it was replaced")
    return TrialOutcome(worker=name, error=f"{type(exc).__name__}: {first}")


def run_trials(ctx: StudyContext, study: Any, name: str, length: int, n_target: int, ask: Ask, *,
               desc: str, combined: bool = False) -> None:
    """Evaluate trials until ``n_target`` of them (complete + failed; interrupted ones not counted)
    are done, one per idle worker at a time."""
    import ray
    from ray.exceptions import RayError
    from tqdm.auto import tqdm

    c = counts(ctx.records(name), combined=combined)
    done = c["complete"] + c["failed"]
    to_launch = max(0, n_target - done)
    if to_launch == 0:
        return
    pool, inject = ctx.pool, ctx.inject or {}
    idle = list(range(len(pool)))
    pending: dict[Any, tuple[Any, int, dict[str, Any], ModelAttentionProfile]] = {}
    bar = tqdm(total=n_target, initial=min(done, n_target), desc=desc, unit="trial", disable=not ctx.progress,
               file=sys.stderr, dynamic_ncols=True)
    best: float | None = None
    try:
        while to_launch > 0 or pending:
            while idle and to_launch > 0:
                index = idle.pop(0)
                trial = study.ask()
                params, profile = ask(trial)
                ctx.store.record_trial(ctx.run, trial.number, seq_len=length, state="running", params=params,
                                       config=profile, worker=pool.name(index), study=name)
                hook = ("crash" if trial.number in inject.get("crash", ()) else
                        "fail" if trial.number in inject.get("fail", ()) else None)
                pending[pool.actors[index].evaluate.remote(trial.number, profile, inject=hook)] = \
                    (trial, index, params, profile)
                to_launch -= 1
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            trial, index, params, profile = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except RayError as exc:
                outcome = _lost(pool, index, exc)
            latency = _record_outcome(ctx, study, trial, name, length, params, profile, outcome)
            if not outcome.ok:
                bar.write(f"trial {trial.number} failed: {outcome.error}")
            if latency is not None:
                best = latency if best is None else min(best, latency)
            ctx.evaluated += 1
            idle.append(index)
            bar.update(1)
            if best is not None:
                bar.set_postfix_str(f"fastest feasible {best:.3g} ms")
    finally:
        bar.close()
