"""The tuning driver: Optuna asks and tells, Ray actors evaluate, the store records.

`tune(options)` runs, for each length:

1. **calibration**: the samples of that length (captured once by the driver and cached on disk
   by `CalibrationCache`, or synthetic: `samples.capture_samples`), loaded into every worker
   (`WorkerPool.load`) with the run's `Objective`, which decides what a worker evaluates;
2. **stage 1**: an Optuna study (two objectives, error and latency, with the accuracy budget as
   constraints; seeded multi-objective TPE) whose trials the workers evaluate in parallel
   (`trials.run_trials`);
3. **stage 2** (``per_layer``): per-layer alpha and window (`search_space`), kept where it pays;
4. the **fastest feasible** profile is saved to the store (with its metrics and the run)
   (`stages.tune_length`).

The driver is the only writer, of the Optuna study (RDB storage at the store's URL, tables
``studies``, ``trials``... beside the store's ``sattn_*`` tables) and of the store. Each trial's
`TrialOutcome` comes back from its worker validated and is written to the store once; Optuna
gets the trial's values and constraints, which its sampler reads.

**Resume**: studies and the run are named from the options (`options.study_name`,
`options.run_name`). Restarted with the same command, the driver loads the studies, fails the
trials a crash left ``RUNNING``, re-queues those that had reached a worker (`trials.recover`),
and runs only the trials still missing: ``--trials N`` is the number of evaluated trials per
length, whatever the interruptions.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from sampleattn.lengths import format_length

from .options import TuneError, TuneOptions, TuneUsageError, calibration_text, resolve_device, run_name, \
    study_name, validate
from .samples import RunSamples, capture_samples
from .search_space import Budget, suggest_params
from .stages import LengthResult, tune_length
from .trials import StudyContext

__all__ = ["LengthResult", "TuneError", "TuneOptions", "TuneReport", "TuneUsageError", "run_name", "study_name",
           "tune"]

SAMPLER_NAME = "TPESampler(multivariate=True), constrained"


@dataclass
class TuneReport:
    """What `tune` returns: the run's name, the store's URL and one `LengthResult` per length.

    ``objective`` is the name of the run's `Objective` (`objective_type` the objective itself)."""

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
    def objective_type(self):
        from .objectives import get_objective

        return get_objective(self.objective)

    @property
    def search_seconds(self) -> float:
        """Time spent in the searches (calibration capture and model loading excluded)."""
        return sum(r.seconds for r in self.lengths)

    @property
    def trials_per_hour(self) -> float:
        """Evaluated trials per hour of search: the throughput to compare across worker counts."""
        return self.evaluated / self.search_seconds * 3600 if self.search_seconds > 0 else 0.0


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def _check(options: TuneOptions, model: Any) -> tuple[Any, str]:
    """Check the options before anything slow starts; returns (the model's spec, the device).

    Fills in the catalogue's spelling of the model and the default rows per layer."""
    from sampleattn.models.catalog import get_model_spec
    from sampleattn.models.loading import resolve_model_source

    spec = get_model_spec(options.model)
    options.model = spec.name
    validate(options)
    device = resolve_device(options.device)
    if options.layers is not None:
        bad = [i for i in options.layers if not 0 <= i < spec.num_layers]
        if bad or not options.layers:
            raise TuneUsageError(f"--layers {bad or options.layers}: {spec.name} has layers 0..{spec.num_layers - 1}")
    if options.rows_per_layer is None:
        options.rows_per_layer = 256 if device == "cuda" else 64
    if options.calibration != "synthetic":
        if model is None:
            resolve_model_source(spec, model_path=options.model_path)  # ModelNotAvailableError, at once
        calibration_text(options)  # missing essays / unreadable file
    if device == "cuda":
        import torch

        if not torch.cuda.is_available() and not options.ray_address:
            raise TuneUsageError("--device cuda but this machine has no CUDA GPU: use --device cpu")
    return spec, device


def _search_space(options: TuneOptions) -> dict[str, Any]:
    """The stage-1 search space as the run records it: each rule's parameters, asked of a probe."""
    import optuna

    from sampleattn.store.schemas import search_space_from_distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = optuna.create_study(directions=["minimize", "minimize"])
    distributions = {}
    for selection in options.selections:
        if len(options.selections) > 1:
            probe.enqueue_trial({"selection": selection})
        t = probe.ask()
        t.set_user_attr("baseline", "dense")
        suggest_params(t, options.lengths[0], options.selections)
        distributions.update(t.distributions)
    space = {k: v.model_dump(mode="json") for k, v in search_space_from_distributions(distributions).items()}
    space["dense_below"] = {"kind": "categorical", "choices": ["0", "2 * length"]}
    return space


def _start_run(store: Any, options: TuneOptions, spec: Any, device: str, samples: RunSamples) -> Any:
    """Register the model and start (or resume) the run in the store."""
    from sampleattn.env import collect_env

    store.register_model(name=spec.name, hf_id=spec.hf_id, family=spec.family, num_layers=spec.num_layers,
                         num_q_heads=spec.num_q_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                         trained_context=spec.trained_context)
    env = collect_env()
    return store.start_run(
        spec.name, name=run_name(options, device), lengths=options.lengths, objective=options.objective,
        calibration=samples.calibration, max_error=options.budget_error,
        min_retained_mass=options.min_retained_mass, search_space=_search_space(options), sampler=SAMPLER_NAME,
        seed=options.seed, env=env, device=env.get("device") if device == "cuda" else "cpu",
        attrs={**samples.attrs, "layers": options.layers, "rows_per_layer": options.rows_per_layer,
               "per_layer": options.per_layer, "trials": options.trials,
               "latency": "measured (CUDA events)" if device == "cuda" else "estimated (analytic, CPU)"},
        resume=True,
    )


def _start_workers(options: TuneOptions, device: str, out: TextIO | None) -> tuple[bool, Any]:
    """Start or join Ray and start the workers; returns (whether Ray was started here, the pool)."""
    from .workers import ClusterError, WorkerPool, start_ray, worker_count

    try:
        started, line = start_ray(options.ray_address)
        if started:
            _say(out, line)
        n, cpus = worker_count(options.workers, device)
    except ClusterError as exc:
        raise TuneError(str(exc)) from None
    pool = WorkerPool(n, device, cpus_per_worker=cpus)
    _say(out, f"workers: {n} {'GPU' if device == 'cuda' else 'CPU'} actor(s)"
              + (f", {cpus} CPU thread(s) each" if device == "cpu" else ""))
    return started, pool


def _search(store: Any, run: Any, pool: Any, options: TuneOptions, device: str, samples: RunSamples,
            out: TextIO | None) -> TuneReport:
    """Every length's search, on started workers; the report without its total time."""
    from .workers import injected_failures

    objective = options.objective_type
    ctx = StudyContext(store=store, run=run, pool=pool, storage_url=store.url, objective=objective,
                       budget=Budget(options.budget_error, options.min_retained_mass), out=out,
                       inject=injected_failures(), progress=options.progress)
    report = TuneReport(run=run.name, store_url=store.url, device=device, objective=objective.name,
                        max_error=options.budget_error, workers=len(pool))
    model_load = ({"spec": options.model, "model_path": options.model_path, "max_length": max(options.lengths)}
                  if objective.needs_model else None)
    for length in sorted(options.lengths):
        started = time.perf_counter()
        pool.load(length, samples.by_length[length], layers=options.layers, rows_per_layer=options.rows_per_layer,
                  seed=options.seed, objective=objective, model_load=model_load)
        _say(out, f"{format_length(length)}: calibration loaded into {len(pool)} worker(s) "
                  f"in {time.perf_counter() - started:.1f} s")
        report.lengths.append(tune_length(ctx, options, device, length))
    report.evaluated = ctx.evaluated
    report.replaced_workers = pool.replaced
    return report


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

    started = time.perf_counter()
    spec, device = _check(options, model)
    store = ProfileStore(options.store)
    _say(out, f"store: {store.url}")
    started_ray, pool, run = False, None, None
    try:
        samples = capture_samples(options, spec, device, model, tokenizer, out)
        run = _start_run(store, options, spec, device, samples)
        _say(out, f"run: {run.name}")
        started_ray, pool = _start_workers(options, device, out)
        report = _search(store, run, pool, options, device, samples, out)
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
