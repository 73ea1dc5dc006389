"""The GPU suite's cases as a table: what each part measures, on which inputs, against which
reference, and which target each row answers. `suite.py` runs the table; nothing here measures.

A part is a list of entries run in order: `Case` (the operator on one configuration, checked
then timed, against the dense reference) and `Dense` (a dense reference timed alone). Lengths are
those of a `Sizes`: the GPU's (`GPU_SIZES`) or tiny ones for a dry run on the CPU (`dry_sizes`),
so that a dry run walks every case of the GPU run at small lengths.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["Case", "Dense", "GPU_SIZES", "PART_ORDER", "Part", "Sizes", "Target", "dry_sizes", "length_word",
           "suite_parts"]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The lengths of one run: the GPU's, or tiny ones for a dry run."""

    geometry: str
    long: int  # the 128K cases
    huge: int  # the 1M cases
    extrapolate_from: tuple[int, ...]  # cuDNN timed here on random inputs, extrapolated to `huge`
    breakeven: tuple[int, ...]
    mid: tuple[int, ...]  # the lengths between `long` and `huge`
    batch_seqlen: int  # the batched cases' length
    repeat: int
    huge_repeat: int
    scale: float  # multiplies every time estimate (dry runs: 0, every case fits)
    mid_layer: int = 14  # the SmolLM2 layer that starts the middle band
    late_layer: int = 24  # ... and the late band
    batch: int = 4
    grid_step: int = 1  # the 128K window x sample grid: every grid_step-th point


GPU_SIZES = Sizes("llama3", 131072, 1048576, (262144, 524288), (4096, 8192, 16384, 32768, 65536),
                  mid=(262144, 524288), batch_seqlen=32768, repeat=7, huge_repeat=2, scale=1.0)


def dry_sizes(length: int = 512) -> Sizes:
    """Tiny lengths for the CPU: every 128K and 1M case at ``length``, the sweeps at half and full."""
    half = length // 2
    return Sizes("smollm2", length, length, (half, length), (half, length), mid=(half, length), batch_seqlen=half,
                 repeat=1, huge_repeat=1, scale=0.0, grid_step=4)


@dataclasses.dataclass(frozen=True)
class Target:
    """One line of the targets table, read from the row of the case that carries it.

    ``field`` of the row is compared with ``bound`` (at least, or at most with ``at_most``);
    ``bound=None`` reports the value without a verdict. ``name`` may name the inputs as
    ``{word}`` (``real-mid``, or the synthetic stand-in)."""

    name: str
    field: str
    bound: float | None = None
    at_most: bool = False
    unit: str = "x"
    percent: bool = False  # show the field times 100


@dataclasses.dataclass(frozen=True)
class Case:
    """The operator on one configuration.

    ``inputs``: ``"real"`` (SmolLM2 heads of ``band`` in ``geometry``, `harness.smollm2_to_geometry`)
    or ``"synthetic"`` (`synthetic.structured_qkv`). ``reference``: the dense times the speed-ups
    are against: ``"cudnn+flash"`` (timed once per length, geometry and batch), ``"flex"`` (the
    same with FlexAttention dense, and the operator's selection in FlexAttention's block-sparse
    form), ``"cudnn"`` (cuDNN only, 1 warm-up, 2 repeats), ``"extrapolated"`` (cuDNN measured at
    this length if it was, else extrapolated from `Sizes.extrapolate_from` by the quadratic law).
    ``window``/``sample`` of None take the choice of part ``chosen_from`` (`Part.choose`);
    ``unless_chosen``: skipped when that choice is this case's own point."""

    part: str
    seqlen: int
    inputs: Literal["real", "synthetic"]
    alpha: float
    window: float | None
    sample: float | None
    band: Literal["mid", "late"] = "mid"
    geometry: str | None = None  # None: the run's geometry
    batch: int = 1
    options: tuple[tuple[str, object], ...] = ()
    repeat: int | None = None  # None: Sizes.repeat
    warmup: int = 2
    reference: Literal["cudnn+flash", "flex", "cudnn", "extrapolated"] = "cudnn+flash"
    memory: bool = False  # measure the extra device memory of one call
    estimate_s: float = 6.0  # seconds on the H200, inputs not counted (a budget, not a measurement)
    suffix: str = ""  # the label's last words
    targets: tuple[Target, ...] = ()
    chosen_from: str | None = None
    unless_chosen: bool = False

    def label(self, inputs_word: str, window: float, sample: float) -> str:
        geometry = f" {self.geometry} geometry" if self.geometry else ""
        batch = f" batch {self.batch}" if self.batch > 1 else ""
        return (f"{length_word(self.seqlen)}{batch} {inputs_word}{geometry} a{self.alpha:.2f} w{window:.0%} "
                f"s{sample:.0%}{self.suffix}")


@dataclasses.dataclass(frozen=True)
class Dense:
    """Dense attention timed alone at ``seqlen``: on ``"random"`` inputs (dense times do not
    depend on the values), or on the held real inputs of the middle band (``"held"``: not
    measured if they are gone). ``fills``: the rows of that part get the measured cuDNN time
    (``cudnn_ms_measured``, ``speedup_vs_cudnn_measured``)."""

    part: str
    seqlen: int
    inputs: Literal["random", "held"]
    warmup: int
    repeat: int
    estimate_s: float
    fills: str | None = None


@dataclasses.dataclass(frozen=True)
class Part:
    """A named list of entries. ``stand_in``: with ``--no-real`` its real inputs are replaced by
    synthetic ones (middle band only) instead of the part being left out. ``choose``: after its
    candidate cases (those with a fixed point), the fastest whose error is no worse than the
    first one's is the part's choice. ``summary``: a targets line over the part's rows
    (`suite_targets.SUMMARIES`)."""

    name: str
    entries: tuple[Case | Dense, ...]
    stand_in: bool = False
    choose: bool = False
    summary: str | None = None


#: The default order: the targets first, then the comparisons; ``--parts`` picks and orders.
PART_ORDER = ("main128k", "synth128k", "alpha099", "breakeven", "rescored", "1m", "dense1m", "native128k", "synth1m",
              "flex128k", "alphas128k", "grid128k", "chatglm2", "batch4", "mid512k")

#: alpha 0.99, window x sample ratios after the reference (w8% s5%); wider windows first: at
#: alpha 0.99 a window of 12-16% leaves fewer stripe columns than 8% does, so they are the
#: likeliest fastest no-worse points and are measured before a tight budget stops the grid.
GRID_099 = ((0.12, 0.05), (0.16, 0.02), (0.12, 0.02), (0.16, 0.05), (0.04, 0.02), (0.02, 0.01), (0.04, 0.01),
            (0.02, 0.02), (0.08, 0.02), (0.08, 0.01), (0.04, 0.05), (0.02, 0.05))
HUGE_POINTS = ((0.01, 0.01), (0.02, 0.01), (0.01, 0.02))
ALPHAS_128K = (0.80, 0.90)
GRID_128K = tuple((w, s) for w in (0.08, 0.04, 0.02) for s in (0.05, 0.02, 0.01))  # w8% s5% first: the reference
MID_POINTS = ((0.08, 0.05), (0.01, 0.01))  # the 128K point and the 1M one
RESCORED = (("selection", "rescored"), ("candidate_alpha", 0.999), ("rescore_stride", 1))


def length_word(n: int) -> str:
    """``131072`` -> ``"128k"``, ``1048576`` -> ``"1m"``; other lengths as numbers."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}m"
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _speed_targets(word: str, cudnn: float = 2.5, flash: float = 4.0, plan: bool = True,
                   memory: bool = True) -> tuple[Target, ...]:
    found = [Target(f"{word} >= {cudnn:g}x cuDNN", "speedup_vs_cudnn", cudnn),
             Target(f"{word} >= {flash:g}x flash", "speedup_vs_flash", flash)]
    if plan:
        found.append(Target(f"{word} plan <= 15% of operator", "plan_share", 0.15, at_most=True, unit="%",
                            percent=True))
    if memory:
        found.append(Target(f"{word} extra memory <= 10% of inputs", "extra_memory_vs_inputs", 0.10, at_most=True,
                            unit="%", percent=True))
    return tuple(found)


def suite_parts(s: Sizes) -> dict[str, Part]:
    """Every part of the suite at the lengths of ``s``, by name."""
    L, paper = s.long, dict(alpha=0.95, window=0.08, sample=0.05)
    late_099 = Case("alpha099", L, "real", 0.99, None, None, band="late", repeat=5, warmup=1, estimate_s=8,
                    suffix=" (choice)", chosen_from="alpha099",
                    targets=(Target("128K real-late a0.99 at that choice >= 2x cuDNN", "speedup_vs_cudnn", 2.0),))
    parts = [
        Part("main128k", tuple(
            Case("main128k", L, "real", **paper, band=band, memory=True, estimate_s=25,
                 targets=_speed_targets(f"128K real-{band} a0.95"))
            for band in ("mid", "late"))),
        Part("synth128k", (Case("synth128k", L, "synthetic", **paper, estimate_s=25,
                                targets=(Target("128K synthetic a0.95 (for comparison)", "speedup_vs_cudnn"),)),)),
        Part("alpha099", (
            Case("alpha099", L, "real", 0.99, 0.08, 0.05, repeat=5, warmup=1, estimate_s=20, suffix=" (reference)"),
            *(Case("alpha099", L, "real", 0.99, w, sm, repeat=5, warmup=1, estimate_s=10) for w, sm in GRID_099),
            late_099,
            Case("alpha099", L, "real", 0.99, 0.08, 0.05, band="late", repeat=5, warmup=1, estimate_s=8,
                 suffix=" (reference)", chosen_from="alpha099", unless_chosen=True)),
            choose=True, summary="alpha099"),
        Part("breakeven", tuple(
            Case("breakeven", n, inputs, **paper, estimate_s=2.5 + 5 * (n / 65536) ** 2)
            for n in s.breakeven for inputs in ("real", "synthetic")), summary="breakeven"),
        Part("rescored", tuple(
            Case("rescored", L, "real", **paper, band=band, options=RESCORED, estimate_s=20, suffix=" rescored")
            for band in ("mid", "late"))),
        Part("1m", (
            *(Dense("1m", n, "random", warmup=1, repeat=2, estimate_s=3 + 5 * (n / 262144) ** 2)
              for n in s.extrapolate_from),
            *(Case("1m", s.huge, "real", 0.95, w, sm, repeat=s.huge_repeat, warmup=1, reference="extrapolated",
                   memory=(w, sm) == (0.01, 0.01), estimate_s=45) for w, sm in HUGE_POINTS)),
            summary="1m"),
        Part("dense1m", (Dense("dense1m", s.huge, "held", warmup=0, repeat=1, estimate_s=45, fills="1m"),)),
        Part("native128k", (Case("native128k", L, "real", **paper, geometry="smollm2", estimate_s=30),)),
        Part("synth1m", (Case("synth1m", s.huge, "synthetic", 0.95, 0.01, 0.01, repeat=1, warmup=0,
                              reference="extrapolated", estimate_s=120),)),
        Part("flex128k", tuple(
            Case("flex128k", L, "real", **paper, band=band, reference="flex", estimate_s=45 + 35 if band == "mid" else 12,
                 suffix=" with FlexAttention") for band in ("mid", "late")), stand_in=True, summary="flex128k"),
        Part("alphas128k", tuple(
            Case("alphas128k", L, "real", a, 0.08, 0.05, band=band) for band in ("mid", "late") for a in ALPHAS_128K),
            stand_in=True, summary="alphas128k"),
        Part("grid128k", tuple(
            Case("grid128k", L, "real", 0.95, w, sm, repeat=5, warmup=1, estimate_s=5)
            for w, sm in GRID_128K[::s.grid_step]), stand_in=True, choose=True, summary="grid128k"),
        Part("chatglm2", tuple(
            Case("chatglm2", L, "real", **paper, band=band, geometry="chatglm2", memory=True, estimate_s=16,
                 targets=_speed_targets("128K ChatGLM2 geometry {word} a0.95", plan=False, memory=False))
            for band in ("mid", "late")), stand_in=True),
        Part("batch4", tuple(
            Case("batch4", s.batch_seqlen, "real", **paper, band=band, batch=s.batch, memory=True, estimate_s=11)
            for band in ("mid", "late")), stand_in=True, summary="batch4"),
        Part("mid512k", tuple(
            Case("mid512k", n, "real", 0.95, w, sm, repeat=3 if n <= 262144 else s.huge_repeat, warmup=1,
                 reference="cudnn", memory=i == 0, estimate_s=(10 if n <= 262144 else 25) + (5 if i == 0 else 0))
            for n in s.mid for i, (w, sm) in enumerate(MID_POINTS)), stand_in=True, summary="mid512k"),
    ]
    return {p.name: p for p in parts}
