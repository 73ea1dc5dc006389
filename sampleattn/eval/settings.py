"""What an accuracy evaluation runs (`EvalSettings`), its time budget (`Budget`) and its rows
(`EvalResult`); `sampleattn.eval.runner` runs it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["BASELINES", "Budget", "EvalResult", "EvalSettings"]

BASELINES = ("window", "streamingllm", "bigbird", "vertical_slash")


@dataclass
class EvalSettings:
    """What to evaluate (the CLI's options; see ``python -m sampleattn.eval --help``)."""

    model: str = "smollm2-135m"
    model_path: str | None = None
    lengths: list[int] = field(default_factory=lambda: [2048])
    samples: int = 1
    needle_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    alphas: list[float] = field(default_factory=lambda: [0.8, 0.9, 0.95])
    window_ratio: float = 0.08
    sample_ratio: float = 0.05
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    match_alphas: list[float] | None = None  # None: every alpha
    oracle_alphas: list[float] = field(default_factory=lambda: [0.95, 0.99])
    rescored_alphas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    candidate_alpha: float = 0.999
    rescore_stride: int = 1
    block_betas: list[float] = field(default_factory=list)  # the block rule's rows, one per beta
    block_window_ratio: float = 0.02
    block_row_stride: int = 1
    block_share_power: int = 1
    block_size: int = 128  # keys per key block and query rows per query block
    block_stripes_alpha: float | None = None  # the paper's stripe columns too, at this alpha
    block_max_stripes: int | None = None  # at most this many stripe columns per head
    estimator: bool = False
    estimator_pool: int = 64
    profile: str | None = None  # a profile store (URL or path): the ``tuned`` row
    allow_synthetic: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    seed: int = 0
    max_new_tokens: int = 10
    max_mask_length: int = 8192  # dense-mask methods (vertical-slash, oracle) up to this length
    rope_scaling: str = "yarn"
    tasks: list[str] = field(default_factory=lambda: ["fidelity", "needle"])
    needle_methods: list[str] | None = None  # families run on the needle task (None: all)
    secondary_depths: list[float] | None = None  # needle depths of tiers 1+ (None: all depths)
    primary_alpha: float = 0.95
    budget_s: float | None = None  # stop starting new work past this (see Budget)

    def matched(self) -> list[float]:
        return list(self.alphas if self.match_alphas is None else self.match_alphas)


@dataclass
class EvalResult:
    """Rows of one evaluation run and its metadata (``meta``: settings, versions, date)."""

    meta: dict[str, Any]
    fidelity: list[dict[str, Any]] = field(default_factory=list)
    needle: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "fidelity": self.fidelity, "needle": self.needle}


class Budget:
    """A wall-clock budget: `fits(seconds)` says whether work expected to take that long ends
    before ``start + seconds_total`` (``seconds_total`` None: no budget).

    ``start`` defaults to now; the CLI passes its process's start, so the budget covers the
    imports too. ``clock`` is `time.time` (a test passes its own).
    """

    def __init__(self, seconds_total: float | None, *, start: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.total = seconds_total
        self.clock = clock
        self.start = clock() if start is None else start

    def elapsed(self) -> float:
        return self.clock() - self.start

    def fits(self, expected_s: float) -> bool:
        return self.total is None or self.elapsed() + max(expected_s, 0.0) <= self.total
