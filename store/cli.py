"""``sattn-store``: inspect, export, import and upgrade the profile store.

    sattn-store list                                 the profiles, one line each
    sattn-store show MODEL [--length 32k]            a model's profiles, or the one a length gets
    sattn-store pareto MODEL --length 32k [--plot out.png]
    sattn-store runs [--model MODEL]                 the tuning runs
    sattn-store export [-o FILE] [--model MODEL]     the store as versioned JSON
    sattn-store import FILE                          upsert an export into the store
    sattn-store delete MODEL [--length 32k]          delete profiles
    sattn-store upgrade                              migrate the store to this version's schema
    sattn-store env                                  the environment metadata a run records

Options (before or after the command): ``--store URL`` (a SQLAlchemy URL or a SQLite file path;
default ``$SAMPLEATTN_STORE``, else ``$XDG_CACHE_HOME/sampleattn/profiles.sqlite``) and
``--format table|json``.

Exit codes: 0 success; 1 not found or operational error (no such store, model, profile or
trial; cannot connect; invalid import); 2 usage error (bad arguments, a length that does not
parse); 3 schema or corruption error (a store from a newer sampleattn, an older one that needs
``sattn-store upgrade``, a damaged file).

Only ``import``, ``delete`` and ``upgrade`` write; every other command opens the store read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_SCHEMA", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SCHEMA = 3


# ---------------------------------------------------------------------- formatting


def _length_arg(text: str) -> int:
    from sampleattn.lengths import parse_length

    try:
        return parse_length(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from sampleattn.tables import format_table

    return format_table(headers, [[_fmt(v) for v in row] for row in rows])


def _pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {_fmt(v)}" for k, v in pairs)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def _dump(record: Any) -> Any:
    return record.model_dump(mode="json")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _length(tokens: int | None) -> str:
    from sampleattn.lengths import format_length

    return "-" if tokens is None else format_length(tokens)


def _mode_and_params(config: Any, length: int) -> tuple[str, Any, Any, Any]:
    """The MODE column and ALPHA, WINDOW, SAMPLE (``-`` under dense, where they do nothing)."""
    from sampleattn.store.display import is_dense, selection_mode, sparse_params

    dense = is_dense(config, length)
    return (selection_mode(config, dense), *sparse_params(config, dense))


def _overrides(profile: Any) -> str:
    layers = profile.config.layers
    heads = sum(len(o.heads) for o in layers.values())
    return f"{len(layers)}L/{heads}H" if layers else "-"


# ---------------------------------------------------------------------- commands


def _open(args: argparse.Namespace, *, write: bool = False, create: bool = False) -> Any:
    from sampleattn.store.store import ProfileStore

    return ProfileStore(args.store, readonly=not write, create=create)


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """The profiles, one line each."""
    with _open(args) as store:
        profiles = store.list_profiles(args.model, calibration_kind=args.calibration)
    if args.format == "json":
        print(_json([_dump(p) for p in profiles]), file=out)
        return EXIT_OK
    if not profiles:
        print(f"no profiles in {store.url}", file=out)
        return EXIT_OK
    rows = [
        (
            p.model,
            _length(p.seq_len),
            p.calibration_kind,
            *_mode_and_params(p.config.config, p.seq_len),
            _overrides(p),
            p.metrics.rel_error,
            p.metrics.speedup,
            p.metrics.density,
            p.content_hash[:12],
            _when(p.updated_at),
        )
        for p in profiles
    ]
    headers = ("MODEL", "LENGTH", "CALIB", "MODE", "ALPHA", "WINDOW", "SAMPLE", "OVERRIDES", "REL_ERR",
               "SPEEDUP", "DENSITY", "HASH", "UPDATED")
    print(_table(headers, rows), file=out)
    return EXIT_OK


def _profile_details(profile: Any, requested: int | None, choice: Any) -> str:
    metrics = profile.metrics
    pairs: list[tuple[str, Any]] = [("model", profile.model)]
    if requested is not None:
        shown = _length(requested)
        pairs.append(("requested length", shown if shown == str(requested) else f"{shown} ({requested} tokens)"))
        rule = "exact" if choice.exact else ("below" if choice.length < requested else "above")
        pairs.append(("profile length", f"{_length(profile.seq_len)} ({rule}, {choice.ratio:.2g}x)"))
    else:
        pairs.append(("profile length", _length(profile.seq_len)))
    pairs += [
        ("calibration", profile.calibration_kind),
        ("run", profile.run),
        ("device", profile.device),
        ("content hash", profile.content_hash),
        ("updated", _when(profile.updated_at)),
        ("rel_error", metrics.rel_error),
        ("retained mass", f"{_fmt(metrics.retained_mass_mean)} mean, {_fmt(metrics.retained_mass_min)} min"),
        ("density", metrics.density),
        ("latency_ms", f"{_fmt(metrics.latency_ms)} ({'measured' if metrics.latency_measured else 'estimated' if metrics.latency_measured is not None else '-'})"),
        ("speedup", metrics.speedup),
    ]
    for key, value in sorted(metrics.extra.items()):
        pairs.append((key, value))
    lines = [_pairs(pairs), "", "global config"]
    lines.append(_pairs(list(profile.config.config.model_dump().items())))
    overrides = []
    for layer, override in sorted(profile.config.layers.items()):
        if (override.alpha, override.window_ratio, override.sample_ratio) != (None, None, None):
            overrides.append((layer, "*", override.alpha, override.window_ratio, override.sample_ratio))
        for head, head_override in sorted(override.heads.items()):
            overrides.append((layer, head, head_override.alpha, head_override.window_ratio, None))
    if overrides:
        lines += ["", "overrides"]
        lines.append(_table(("LAYER", "HEAD", "ALPHA", "WINDOW", "SAMPLE"), overrides))
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    """A model: its profiles and runs, or (with --length) the profile that length gets."""
    with _open(args) as store:
        if args.length is not None:
            profile, choice = store.resolve_profile(args.model, args.length, allow_synthetic=args.allow_synthetic)
            if choice.far:
                print(
                    f"sattn-store: warning: the profile used for {_length(args.length)} was tuned at "
                    f"{_length(choice.length)} ({choice.ratio:.1f}x away); tune that length for better "
                    "parameters",
                    file=sys.stderr,
                )
            if args.format == "json":
                data = {
                    "requested_length": args.length,
                    "bucket": {"length": choice.length, "exact": choice.exact, "ratio": choice.ratio, "far": choice.far},
                    "profile": _dump(profile),
                }
                print(_json(data), file=out)
            else:
                print(_profile_details(profile, args.length, choice), file=out)
            return EXIT_OK
        model = store.get_model(args.model)
        profiles = store.list_profiles(args.model)
        runs = store.list_runs(args.model)
    if args.format == "json":
        data = {"model": _dump(model), "profiles": [_dump(p) for p in profiles], "runs": [_dump(r) for r in runs]}
        print(_json(data), file=out)
        return EXIT_OK
    geometry = f"{model.num_layers} layers, {model.num_q_heads} query heads, {model.num_kv_heads} KV heads, head dim {model.head_dim}"
    print(_pairs([
        ("model", model.name),
        ("hf id / path", model.hf_id),
        ("family", model.family),
        ("geometry", geometry),
        ("trained context", _length(model.trained_context)),
    ]), file=out)
    print("\nprofiles", file=out)
    rows = [
        (_length(p.seq_len), p.calibration_kind, *_mode_and_params(p.config.config, p.seq_len), _overrides(p),
         p.metrics.rel_error, p.metrics.speedup, p.run, p.content_hash[:12])
        for p in profiles
    ]
    print(_table(("LENGTH", "CALIB", "MODE", "ALPHA", "WINDOW", "SAMPLE", "OVERRIDES", "REL_ERR", "SPEEDUP", "RUN",
                  "HASH"), rows), file=out)
    print("\nruns", file=out)
    print(_runs_table(runs), file=out)
    return EXIT_OK


def _runs_table(runs: Sequence[Any]) -> str:
    rows = [
        (r.name, r.model, ",".join(_length(n) for n in r.lengths), r.objective, r.max_error, r.calibration.kind,
         r.device, r.status, _when(r.started_at), _when(r.finished_at))
        for r in runs
    ]
    return _table(("RUN", "MODEL", "LENGTHS", "OBJECTIVE", "MAX_ERR", "CALIB", "DEVICE", "STATUS", "STARTED", "FINISHED"), rows)


def cmd_runs(args: argparse.Namespace, out: TextIO) -> int:
    """The tuning runs."""
    with _open(args) as store:
        runs = store.list_runs(args.model)
        counts = {r.name: len(store.trials(r.name)) for r in runs}
    if args.format == "json":
        print(_json([{**_dump(r), "trials": counts[r.name]} for r in runs]), file=out)
    else:
        print(_runs_table(runs) if runs else f"no runs in {store.url}", file=out)
    return EXIT_OK


def _chosen_trials(profiles: Sequence[Any], trials: Sequence[Any]) -> list[Any]:
    """The trials whose configuration is a stored profile of their run at their length."""
    from sampleattn.store.schemas import content_hash

    stored = {(p.run, p.content_hash) for p in profiles}
    return [t for t in trials if t.config is not None and (t.run, content_hash(t.config)) in stored]


def _budget(runs: Sequence[Any]) -> float | None:
    """The runs' budget on the relative L2 error, when they share one (``--objective layer``);
    ``None`` otherwise (a KL budget does not apply to the error plotted here)."""
    budgets = {r.max_error for r in runs if r.objective == "layer" and r.max_error is not None}
    if len(budgets) == 1 and all(r.objective == "layer" for r in runs):
        return budgets.pop()
    return None


def cmd_pareto(args: argparse.Namespace, out: TextIO) -> int:
    """The non-dominated trials of a model at one length (error vs latency)."""
    with _open(args) as store:
        front = store.pareto(args.model, args.length, run=args.run, calibration_kind=args.calibration)
        if not front:
            lengths = ", ".join(_length(n) for n in store.tuned_lengths(args.model)) or "none"
            print(
                f"sattn-store: error: no complete trial of {args.model} at {_length(args.length)} with both "
                f"error and latency; lengths with trials: {lengths}",
                file=sys.stderr,
            )
            return EXIT_ERROR
        trials = [
            t for t in store.trials(model=args.model, seq_len=args.length, states=["complete"], run=args.run)
            if t.metrics.rel_error is not None and t.metrics.latency_ms is not None
        ]
        profiles = [p for p in store.list_profiles(args.model) if p.seq_len == args.length]
        run_names = {t.run for t in front}
        runs = [r for r in store.list_runs(args.model) if r.name in run_names]
    chosen = _chosen_trials(profiles, trials)
    chosen_keys = {(t.run, t.study, t.number) for t in chosen}
    if args.plot:
        from sampleattn.store.display import FrontPanel, plot_fronts

        on_front = [t for t in chosen if (t.run, t.study, t.number) in {(f.run, f.study, f.number) for f in front}]
        plot_fronts(args.plot, [FrontPanel(
            title=f"{args.model} at {_length(args.length)}", trials=trials,
            error=lambda t: t.metrics.rel_error, error_label="relative L2 error", budget=_budget(runs),
            chosen=(on_front or chosen or [None])[0])])
    if args.format == "json":
        data = {"model": args.model, "seq_len": args.length, "plot": args.plot,
                "front": [{**_dump(t), "chosen": (t.run, t.study, t.number) in chosen_keys} for t in front]}
        print(_json(data), file=out)
        return EXIT_OK
    rows = []
    for t in front:
        config = t.config.config if t.config is not None else None
        mode, alpha, window, sample = _mode_and_params(config, t.seq_len) if config else ("-", None, None, None)
        rows.append((
            "*" if (t.run, t.study, t.number) in chosen_keys else "", t.run, t.number, mode,
            t.metrics.rel_error, t.metrics.latency_ms,
            None if t.metrics.latency_measured is None else ("measured" if t.metrics.latency_measured else "estimated"),
            t.metrics.speedup, t.metrics.density, t.metrics.retained_mass_min, alpha, window, sample,
        ))
    headers = ("CHOSEN", "RUN", "TRIAL", "MODE", "REL_ERR", "LATENCY_MS", "LATENCY", "SPEEDUP", "DENSITY",
               "RETAINED_MIN", "ALPHA", "WINDOW", "SAMPLE")
    print(_table(headers, rows), file=out)
    notes = []
    if chosen:
        off = [t for t in chosen if (t.run, t.study, t.number) not in {(f.run, f.study, f.number) for f in front}]
        notes.append("* = the trial stored as the profile at this length"
                     + (f" (trial {', '.join(str(t.number) for t in off)} of {off[0].run} is not on this front)"
                        if off else ""))
    else:
        notes.append("no trial on this front is the stored profile at this length")
    if any(t.metrics.latency_measured is False for t in front):
        from sampleattn.store.display import ESTIMATED_NOTE

        notes.append(ESTIMATED_NOTE)
    print("\n" + "\n".join(notes), file=out)
    if args.plot:
        print(f"\nplot written to {args.plot}", file=out)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    """The store (or some models) as versioned JSON, to a file or stdout."""
    with _open(args) as store:
        export = store.export(args.model, include_trials=not args.no_trials)
    text = export.model_dump_json(indent=2)
    if args.output in (None, "-"):
        print(text, file=out)
        return EXIT_OK
    with open(args.output, "w") as handle:
        handle.write(text + "\n")
    counts = {k: len(getattr(export, k)) for k in ("models", "runs", "trials", "profiles")}
    if args.format == "json":
        print(_json({"output": args.output, **counts}), file=out)
    else:
        print(f"exported {', '.join(f'{v} {k}' for k, v in counts.items())} to {args.output}", file=out)
    return EXIT_OK


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    """Upsert an export file (``-``: stdin) into the store; creates the store if needed."""
    from sampleattn.store.errors import ImportFormatError

    if args.file == "-":
        data: Any = sys.stdin.read()
    else:
        try:
            with open(args.file) as handle:
                data = handle.read()
        except OSError as exc:
            raise ImportFormatError(f"cannot read {args.file}: {exc.strerror}") from None
    from sampleattn.store.transfer import read_export as _read_export

    export = _read_export(data)  # validate before creating or opening anything for writing
    with _open(args, write=True, create=True) as store:
        summary = store.import_(export)
    if args.format == "json":
        print(_json({"store": store.url, **summary.model_dump()}), file=out)
    else:
        counts = ", ".join(f"{v} {k}" for k, v in summary.model_dump().items())
        print(f"imported {counts} into {store.url}", file=out)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    """Delete a model's profiles (at one length / of one calibration kind)."""
    with _open(args, write=True) as store:
        count = store.delete_profile(args.model, args.length, calibration_kind=args.calibration)
    if count == 0:
        print(f"sattn-store: error: no matching profile of {args.model}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        print(_json({"model": args.model, "deleted": count}), file=out)
    else:
        print(f"deleted {count} profile{'s' if count != 1 else ''} of {args.model}", file=out)
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace, out: TextIO) -> int:
    """Migrate the store to the schema of this sampleattn (no-op when it is current)."""
    from sampleattn.store.migrate import HEAD_REVISION

    with _open(args, write=True, create=False) as store:
        before = store.migrated_from
        url = store.url
    if args.format == "json":
        print(_json({"store": url, "from": before or HEAD_REVISION, "to": HEAD_REVISION,
                     "migrated": before is not None}), file=out)
    elif before is None:
        print(f"{url}: schema {HEAD_REVISION} is current; nothing to do", file=out)
    else:
        print(f"{url}: upgraded schema {before} -> {HEAD_REVISION}", file=out)
    return EXIT_OK


def cmd_env(args: argparse.Namespace, out: TextIO) -> int:
    """The environment metadata a tuning run records (`sampleattn.env.collect_env`)."""
    from sampleattn.env import collect_env

    env = collect_env()
    if args.format == "json":
        print(_json(env), file=out)
    else:
        print(_pairs(list(env.items())), file=out)
    return EXIT_OK


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--store`` and ``--format`` work before or after the command)."""
    def common() -> argparse.ArgumentParser:
        # A fresh parent per parser: parents share their action objects, and the subcommands'
        # SUPPRESS defaults must not overwrite a value given before the command.
        options = argparse.ArgumentParser(add_help=False)
        options.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                             help="SQLAlchemy URL or SQLite file path (default: $SAMPLEATTN_STORE, "
                                  "else $XDG_CACHE_HOME/sampleattn/profiles.sqlite)")
        options.add_argument("--format", choices=("table", "json"), default=argparse.SUPPRESS,
                             help="output format (default: table)")
        return options

    parser = argparse.ArgumentParser(
        prog="sattn-store",
        description="Inspect, export, import and upgrade the SampleAttention profile store.",
        epilog="exit codes: 0 ok, 1 not found or operational error, 2 usage error, 3 schema or corrupt store",
        parents=[common()],
    )
    parser.set_defaults(store=None, format="table")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace, TextIO], int], help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common()], help=help_, description=help_)
        sub.set_defaults(handler=handler)
        return sub

    calib = {"choices": ("real", "synthetic"), "default": None, "help": "only profiles of this calibration kind"}
    sub = add("list", cmd_list, "list the profiles")
    sub.add_argument("--model", default=None, help="only this model")
    sub.add_argument("--calibration", **calib)

    sub = add("show", cmd_show, "show a model's profiles and runs, or the profile a length gets")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("--length", type=_length_arg, default=None, help="sequence length (32k, 96k, 1m, 32768)")
    sub.add_argument("--allow-synthetic", action="store_true",
                     help="use profiles tuned on synthetic calibration data when no real one exists")

    sub = add("pareto", cmd_pareto, "the non-dominated trials (error vs latency) of a model at one length")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("--length", type=_length_arg, required=True, help="tuned length (32k, 96k, 1m, 32768)")
    sub.add_argument("--run", default=None, help="only the trials of this run")
    sub.add_argument("--calibration", **{**calib, "help": "only runs of this calibration kind"})
    sub.add_argument("--plot", metavar="PNG", default=None, help="also plot the trials and the front to this PNG")

    sub = add("runs", cmd_runs, "list the tuning runs")
    sub.add_argument("--model", default=None, help="only this model")

    sub = add("export", cmd_export, "write the store as versioned JSON")
    sub.add_argument("-o", "--output", metavar="FILE", default=None, help="output file (default: stdout)")
    sub.add_argument("--model", action="append", default=None, help="only this model (repeatable)")
    sub.add_argument("--no-trials", action="store_true", help="leave the trials out")

    sub = add("import", cmd_import, "upsert an export into the store (creates the store if needed)")
    sub.add_argument("file", metavar="FILE", help="an export file, or - for stdin")

    sub = add("delete", cmd_delete, "delete a model's profiles")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("--length", type=_length_arg, default=None, help="only the profile at this length")
    sub.add_argument("--calibration", **calib)

    add("upgrade", cmd_upgrade, "migrate the store to this sampleattn's schema")
    add("env", cmd_env, "print the environment metadata a tuning run records")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run ``sattn-store``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a usage error
    out = out if out is not None else sys.stdout
    from sampleattn.store.errors import StoreError

    try:
        return args.handler(args, out)
    except StoreError as exc:
        print(f"sattn-store: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # invalid content (pydantic), e.g. a hand-edited row
        print(f"sattn-store: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `sattn-store export | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
