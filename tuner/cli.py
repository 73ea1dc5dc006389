"""``sattn-tune``: find the fastest SampleAttention configuration within an accuracy budget.

Usage::

    sattn-tune --model NAME --lengths 32k,96k [--trials N] [--max-error E] [--per-layer]
               [--store URL] [--ray-address ADDR] [--workers N] [--device cuda|cpu]
               [--calibration essays|synthetic|FILE] [--samples N] [--model-path P]
               [--objective layer|model] [--plot PNG] [--seed S]

Also ``python -m sampleattn.tuner``. Exit codes: 0 done; 1 runtime error (model weights not on
this machine, store or Ray failure, no feasible trial at some length); 2 usage error (bad option,
unknown model, unreadable length); 130 interrupted (Ctrl-C; run it again to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sampleattn.rules import RULES

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _lengths(text: str) -> list[int]:
    from sampleattn.lengths import parse_lengths

    try:
        return parse_lengths(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _layers(text: str) -> list[int]:
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers {text!r}: give indices and ranges, e.g. 0,5,10-12") from None
    if not out:
        raise argparse.ArgumentTypeError("--layers names no layer")
    return sorted(set(out))


def build_parser() -> argparse.ArgumentParser:
    from .objectives import OBJECTIVES
    from .search_space import DEFAULT_MIN_RETAINED_MASS

    p = argparse.ArgumentParser(
        prog="sattn-tune",
        description="Search, per model and length, the fastest SampleAttention configuration within an "
        "accuracy budget (Optuna on Ray workers), and store it as a profile.",
        epilog="exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted (run again to resume). "
        "See docs/tuner.md.",
    )
    p.add_argument("--model", required=True, help="catalogue name or Hugging Face id (e.g. smollm2-135m)")
    p.add_argument("--lengths", required=True, type=_lengths, help="comma-separated lengths, e.g. 32k,96k")
    p.add_argument("--trials", type=int, default=20, help="evaluated trials per length (default 20)")
    p.add_argument("--max-error", type=float, default=None,
                   help="accuracy budget in the objective's terms (default: "
                        + "; ".join(f"{o.name} {o.default_max_error:g} {o.label}" for o in OBJECTIVES.values()) + ")")
    p.add_argument("--min-retained-mass", type=float, default=DEFAULT_MIN_RETAINED_MASS,
                   help=f"floor on the mean retained attention mass (default {DEFAULT_MIN_RETAINED_MASS})")
    p.add_argument("--per-layer", action="store_true", help="second stage: per-layer alpha and window")
    p.add_argument("--store", default=None, metavar="URL", help="profile store (SQLAlchemy URL or SQLite path)")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="join this Ray cluster (default: start one)")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU; 2 on the CPU)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument("--calibration", default="essays", metavar="essays|synthetic|FILE",
                   help="calibration text: the needle-in-a-haystack essays (default), synthetic q/k/v "
                        "(dry runs, recorded as synthetic), or a .txt/.jsonl file")
    p.add_argument("--samples", type=int, default=2, help="calibration samples per length (default 2)")
    p.add_argument("--model-path", default=None, metavar="P", help="model folder or .gguf file")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="layer",
                   help="; ".join(f"{o.name}: {o.summary}" for o in OBJECTIVES.values()))
    p.add_argument("--plot", default=None, metavar="PNG", help="write the Pareto fronts to this PNG")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler, windows and rows (default 0)")
    p.add_argument("--layers", type=_layers, default=None,
                   help="evaluate only these layers (e.g. 0,4,8-10): quick runs and tests")
    p.add_argument("--rows", type=int, default=None, dest="rows_per_layer",
                   help="rows per layer and sample for the error (default 64 on the CPU, 256 on a GPU)")
    p.add_argument("--cache-dir", default=None, help="calibration cache folder (default: calibration/ in the user cache folder, $SAMPLEATTN_CACHE or $XDG_CACHE_HOME/sampleattn)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--selection", default="sampled", metavar="sampled[,rescored][,block]",
                   help="selection rules the search may choose (default: sampled, the paper's rule); each "
                        "adds its own parameters: " + "; ".join(f"{name}: {rule.summary}" for name, rule in RULES.items()))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad options
    from sampleattn.store.errors import StoreError

    from sampleattn.models.catalog import UnknownModelError
    from sampleattn.models.loading import ModelNotAvailableError
    from .report import plot_pareto, print_summary
    from .search import TuneError, TuneOptions, TuneUsageError, tune

    options = TuneOptions(
        model=args.model, lengths=args.lengths, trials=args.trials, max_error=args.max_error,
        min_retained_mass=args.min_retained_mass, per_layer=args.per_layer, store=args.store,
        ray_address=args.ray_address, workers=args.workers, device=args.device, calibration=args.calibration,
        samples=args.samples, model_path=args.model_path, objective=args.objective, plot=args.plot,
        seed=args.seed, layers=args.layers, rows_per_layer=args.rows_per_layer, cache_dir=args.cache_dir,
        progress=not args.no_progress, selections=tuple(x.strip() for x in args.selection.split(",") if x.strip()),
    )
    try:
        report = tune(options)
    except (UnknownModelError, TuneUsageError) as exc:
        parser.print_usage(sys.stderr)
        print(f"sattn-tune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelNotAvailableError as exc:
        print(f"sattn-tune: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except (TuneError, StoreError, FileNotFoundError, ValueError) as exc:
        print(f"sattn-tune: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("\nsattn-tune: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print()
    print_summary(report, sys.stdout)
    if args.plot:
        print(f"plot:  {plot_pareto(report, args.plot)}")
    if any(r.chosen is None for r in report.lengths):
        return EXIT_RUNTIME
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
