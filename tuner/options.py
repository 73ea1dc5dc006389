"""A tuning run's options, their checks, and the names of its studies and run.

Studies are named from the model, the length, the objective, the calibration and the device
(`study_name`), the run from the model, the lengths and the same options (`run_name`): the same
command finds them again, which is how a killed run resumes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from sampleattn.lengths import format_length

from .objectives import Objective, get_objective
from .search_space import DEFAULT_MIN_RETAINED_MASS, SELECTIONS

__all__ = ["TuneError", "TuneOptions", "TuneUsageError", "calibration_text", "resolve_device", "run_name",
           "study_name", "validate"]


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
        max_error: accuracy budget in the objective's terms (default: the objective's).
        min_retained_mass: floor on the mean retained attention mass.
        per_layer: run stage 2. store: store URL or path (default: the store's default).
        ray_address: join this Ray cluster instead of starting a local one.
        workers: number of Ray actors (default: one per GPU; on the CPU, 2 or fewer).
        device: ``cuda``, ``cpu`` or None (cuda when available).
        calibration: ``essays``, ``synthetic`` or a text file (.txt / .jsonl).
        samples: calibration samples per length. model_path: where the weights are.
        objective: the name of an `Objective` (``layer`` or ``model``). plot: PNG path of the
            Pareto fronts. seed: sampler, calibration windows and row subsets.
        layers: evaluate only these layer indices (debugging, quick runs).
        rows_per_layer: rows per (sample, layer) for the error (default 64 on the CPU, 256 on a GPU).
        cache_dir: calibration cache folder (default `default_cache_root`).
        progress: show progress bars.
        selections: the selection rules the search may choose (``sampled``, ``rescored``, ``block``).
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

    @property
    def objective_type(self) -> Objective:
        """The `Objective` named by ``objective``."""
        return get_objective(self.objective)

    @property
    def budget_error(self) -> float:
        """``max_error``, or the objective's default budget."""
        return self.max_error if self.max_error is not None else self.objective_type.default_max_error


# ------------------------------------------------------------------------------------------ checks


def validate(options: TuneOptions) -> None:
    """Raise `TuneUsageError` for options that cannot work (before anything slow starts)."""
    if not options.lengths:
        raise TuneUsageError("no length to tune: give --lengths, e.g. --lengths 32k,96k")
    if any(n < 64 for n in options.lengths):
        raise TuneUsageError(f"lengths must be at least 64 tokens (got {options.lengths})")
    if len(set(options.lengths)) != len(options.lengths):
        raise TuneUsageError(f"--lengths lists a length twice ({options.lengths})")
    for name, value in (("--trials", options.trials), ("--samples", options.samples), ("--workers", options.workers)):
        if value is not None and value < 1:
            raise TuneUsageError(f"{name} must be at least 1 (got {value})")
    try:
        options.objective_type.check_calibration(options.calibration)
    except ValueError as exc:
        raise TuneUsageError(str(exc)) from None
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


def resolve_device(device: str | None) -> str:
    """``cuda`` or ``cpu``: the one asked for, or cuda when this machine has a GPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise TuneUsageError(f"--device {device!r}: choose cuda or cpu")
    return device


def calibration_text(options: TuneOptions) -> tuple[str, str]:
    """(text, source label) of a real calibration; `TuneError` when the essays are missing."""
    from sampleattn.models.text import essays_text, load_calibration_file

    if options.calibration == "essays":
        try:
            return essays_text(), "essays"
        except FileNotFoundError as exc:
            raise TuneError(str(exc)) from None
    return load_calibration_file(options.calibration), f"file:{os.path.basename(options.calibration)}"


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
