"""Ray workers: long-lived actors that keep the calibration tensors in memory and evaluate trials.

One actor per GPU (``num_gpus=1``) where there are GPUs, CPU actors otherwise. The driver
(`sampleattn.tuner.search`) creates them once (`WorkerPool`), loads each length's calibration
into them once (`TrialWorker.load`), and sends them trials (`TrialWorker.evaluate`); the
actors never open the store: each trial comes back as one validated `TrialOutcome` and the
driver writes it.

An exception in a trial (including CUDA out-of-memory) is caught in the actor, which frees
what it can and returns an outcome holding the error; the trial is recorded as failed and the
run goes on. An actor that dies (a crash, the OOM killer) is replaced by the pool, and the trial
it held is recorded as failed.

Test hooks (read by the driver from its environment and passed to the actors, documented in
docs/tuner.md): ``SATTN_TUNE_FAIL_TRIALS=3,5`` makes trials 3 and 5 of every study raise;
``SATTN_TUNE_CRASH_TRIALS=4`` makes the actor evaluating trial 4 exit abruptly, as a dying
worker would.

``import sampleattn.tuner.workers`` does not import ray; `WorkerPool` does when it is built.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .outcome import TrialOutcome

if TYPE_CHECKING:  # pragma: no cover
    from sampleattn.config import ModelAttentionProfile

    from .objectives import Objective

__all__ = ["ClusterError", "TrialWorker", "WorkerPool", "injected_failures", "start_ray", "worker_count"]


class ClusterError(RuntimeError):
    """The Ray cluster cannot run the workers asked for; the message says what to change."""


def injected_failures(environ: dict[str, str] | None = None) -> dict[str, set[int]]:
    """The test hooks: ``{"fail": {...}, "crash": {...}}`` trial numbers from the environment."""
    environ = os.environ if environ is None else environ
    out: dict[str, set[int]] = {}
    for kind, var in (("fail", "SATTN_TUNE_FAIL_TRIALS"), ("crash", "SATTN_TUNE_CRASH_TRIALS")):
        text = environ.get(var, "").strip()
        out[kind] = {int(x) for x in text.split(",") if x.strip()} if text else set()
    return out


class TrialWorker:
    """What one Ray actor runs (also usable in-process, e.g. for debugging).

    Args:
        name: the worker's name in the store (``cpu-actor-0``, ``gpu-actor-1``...).
        device: ``"cpu"`` or ``"cuda"`` (the GPU Ray assigned to this actor).
        threads: torch CPU threads for this worker.
    """

    def __init__(self, name: str, device: str = "cpu", threads: int | None = None) -> None:
        import torch

        self.name = name
        self.device = device
        if threads:
            torch.set_num_threads(int(threads))
        self.layer_eval = None
        self.evaluator = None
        self.model = None
        self.model_key: tuple | None = None
        self.length: int | None = None

    def describe(self) -> dict[str, Any]:
        """Host, device name and process id of the worker."""
        import torch

        gpu = torch.cuda.get_device_name(0) if self.device == "cuda" and torch.cuda.is_available() else "cpu"
        return {"name": self.name, "host": socket.gethostname(), "device": gpu, "pid": os.getpid()}

    def load(
        self,
        length: int,
        samples: Sequence[Any],
        *,
        layers: Sequence[int] | None,
        rows_per_layer: int,
        seed: int,
        objective: Objective | None = None,
        model_load: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Hold the calibration of one length (replacing the previous one); compute exact outputs.

        ``samples`` are `CalibrationSample` (read from the cache folder, which must be visible
        on this worker's machine) or `SyntheticSample` objects. An ``objective`` that needs the
        model (`Objective.needs_model`) has it loaded here once (``model_load``: `load_model`
        keyword arguments). Returns ``{"dense_ms", "seconds"}``.
        """
        import torch

        from .evaluate import LayerEvaluator
        from .objectives import LayerObjective

        objective = objective or LayerObjective()
        started = time.perf_counter()
        for sample in samples:
            path = getattr(sample, "path", None)
            if path is not None and not os.path.isdir(path):
                raise FileNotFoundError(
                    f"worker {self.name} on {socket.gethostname()} cannot see the calibration cache folder "
                    f"{path}: on a multi-machine Ray cluster, put the cache (--cache-dir) on a shared file system"
                )
        self.layer_eval = self.evaluator = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
        self.layer_eval = LayerEvaluator(samples, layers=layers, device=self.device,
                                         rows_per_layer=rows_per_layer, seed=seed)
        if objective.needs_model:
            key = tuple(sorted((model_load or {}).items()))
            if self.model is None or self.model_key != key:
                from sampleattn.models.loading import load_model

                self.model, _ = load_model(**(model_load or {}), device=self.device)
                self.model_key = key
        self.evaluator = objective.evaluator(self.layer_eval, samples, model=self.model, device=self.device)
        self.length = int(length)
        return {"dense_ms": self.layer_eval.dense_ms, "seconds": time.perf_counter() - started}

    def set_dense_ms(self, dense_ms: float) -> None:
        """Use this dense time in the CPU latency estimate (the pool's median, for consistency)."""
        if self.layer_eval is not None and not self.layer_eval.cuda:
            self.layer_eval.dense_ms = float(dense_ms)

    def evaluate(self, number: int, profile: ModelAttentionProfile, *, inject: str | None = None) -> TrialOutcome:
        """Evaluate one trial; never raises for a failing trial (the outcome holds the error).

        Args:
            number: the Optuna trial number (for messages and the test hooks).
            profile: the trial's profile.
            inject: test hook, ``"fail"`` (raise) or ``"crash"`` (exit the process).
        """
        import torch

        started = time.perf_counter()
        device = self.describe()["device"]
        try:
            if self.evaluator is None:
                raise RuntimeError("the worker holds no calibration data (load() was not called)")
            if inject == "crash":
                os._exit(17)
            if inject == "fail":
                raise RuntimeError(f"injected failure of trial {number} (SATTN_TUNE_FAIL_TRIALS)")
            result = self.evaluator(profile)
            return TrialOutcome(worker=self.name, device=device, duration_s=time.perf_counter() - started,
                                result=result)
        except Exception as exc:  # noqa: BLE001 - a failing trial is data, not a crash
            message = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                message = "CUDA out of memory: " + str(exc).splitlines()[0]
            if self.device == "cuda":
                torch.cuda.empty_cache()
            return TrialOutcome(worker=self.name, device=device, duration_s=time.perf_counter() - started,
                                error=message)


class WorkerPool:
    """Ray actors running `TrialWorker`, replaced when they die.

    Args:
        n: number of actors.
        device: ``"cuda"`` (one GPU per actor) or ``"cpu"``.
        cpus_per_worker: CPUs reserved per actor (and its torch threads on the CPU).
    """

    def __init__(self, n: int, device: str, *, cpus_per_worker: int = 1) -> None:
        import ray

        self.ray = ray
        self.device = device
        self.cpus = max(1, int(cpus_per_worker))
        options: dict[str, Any] = {"num_cpus": self.cpus, "max_restarts": 0, "max_concurrency": 1}
        if device == "cuda":
            options["num_gpus"] = 1
        self._cls = ray.remote(TrialWorker).options(**options)
        self._created = 0
        self.names: list[str] = []
        self.actors: list[Any] = []
        for _ in range(n):
            actor, name = self._new_actor()
            self.actors.append(actor)
            self.names.append(name)
        self._load_args: tuple | None = None
        self.replaced = 0

    def _new_actor(self):
        kind = "gpu" if self.device == "cuda" else "cpu"
        name = f"{kind}-actor-{self._created}"
        self._created += 1
        actor = self._cls.remote(name, self.device, self.cpus)
        return actor, name

    def __len__(self) -> int:
        return len(self.actors)

    def name(self, index: int) -> str:
        return self.names[index]

    def load(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Call `TrialWorker.load` on every actor (in parallel); the dense time is made uniform."""
        self._load_args = (args, kwargs)
        infos = self.ray.get([a.load.remote(*args, **kwargs) for a in self.actors])
        if self.device == "cpu":
            dense = sorted(i["dense_ms"] for i in infos)[len(infos) // 2]
            self.dense_ms = dense
            self.ray.get([a.set_dense_ms.remote(dense) for a in self.actors])
        return infos

    def replace(self, index: int) -> None:
        """Kill actor ``index`` (if it still lives) and start a new one with the current data."""
        try:
            self.ray.kill(self.actors[index], no_restart=True)
        except Exception:  # noqa: BLE001 - it is dead already
            pass
        actor, name = self._new_actor()
        self.actors[index] = actor
        self.names[index] = name
        self.replaced += 1
        if self._load_args is not None:
            args, kwargs = self._load_args
            self.ray.get(actor.load.remote(*args, **kwargs))
            if self.device == "cpu" and getattr(self, "dense_ms", None) is not None:
                self.ray.get(actor.set_dense_ms.remote(self.dense_ms))

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []


def start_ray(address: str | None) -> tuple[bool, str]:
    """Join the Ray cluster at ``address``, or start a local one (unless Ray already runs here).

    Returns (whether this call started Ray, and so must shut it down; a line describing the
    cluster). Raises `ClusterError` when the cluster cannot be joined.
    """
    import ray

    if ray.is_initialized():
        return False, "ray: already running in this process"
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ConnectionError and friends
            raise ClusterError(f"cannot join the Ray cluster at {address}: {exc}") from None
    else:
        ray.init(object_store_memory=512 * 1024**2, **kwargs)
    resources = ray.cluster_resources()
    return True, (f"ray: {'joined ' + address if address else 'local cluster'}, "
                  f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")


def worker_count(requested: int | None, device: str) -> tuple[int, int]:
    """(actors, CPUs per actor) on this cluster: ``requested`` actors, or one per GPU (on the CPU,
    2 or fewer). Raises `ClusterError` when the cluster has too few GPUs or CPUs."""
    import ray

    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    if device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ClusterError("--device cuda but the Ray cluster has no GPU: use --device cpu, or join a GPU cluster")
        n = requested or gpus
        if n > gpus:
            raise ClusterError(f"--workers {n} GPU actors but the Ray cluster has {gpus} GPUs")
        return n, max(1, min(4, cpus // n))
    n = requested or max(1, min(2, cpus))
    if n > cpus:
        raise ClusterError(f"--workers {n} CPU actors but the Ray cluster has {cpus} CPUs")
    return n, max(1, cpus // n)
