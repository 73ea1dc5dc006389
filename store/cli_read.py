"""The read-only ``sattn-store`` commands: ``list``, ``show``, ``runs`` and ``pareto``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from . import cli_view as view

__all__ = ["cmd_list", "cmd_pareto", "cmd_runs", "cmd_show"]


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """The profiles, one line each."""
    with view.open_store(args) as store:
        profiles = store.list_profiles(args.model, calibration_kind=args.calibration)
    if args.format == "json":
        print(view.to_json([view.dump(p) for p in profiles]), file=out)
        return view.EXIT_OK
    if not profiles:
        print(f"no profiles in {store.url}", file=out)
        return view.EXIT_OK
    rows = [
        (
            p.model,
            view.length_text(p.seq_len),
            p.calibration_kind,
            *view.mode_and_params(p.config.config, p.seq_len),
            view.overrides_text(p),
            p.metrics.rel_error,
            p.metrics.speedup,
            p.metrics.density,
            p.content_hash[:12],
            view.when(p.updated_at),
        )
        for p in profiles
    ]
    headers = ("MODEL", "LENGTH", "CALIB", "MODE", "ALPHA", "WINDOW", "SAMPLE", "OVERRIDES", "REL_ERR",
               "SPEEDUP", "DENSITY", "HASH", "UPDATED")
    print(view.table(headers, rows), file=out)
    return view.EXIT_OK


def _profile_details(profile: Any, requested: int | None, choice: Any) -> str:
    metrics = profile.metrics
    pairs: list[tuple[str, Any]] = [("model", profile.model)]
    if requested is not None:
        shown = view.length_text(requested)
        pairs.append(("requested length", shown if shown == str(requested) else f"{shown} ({requested} tokens)"))
        rule = "exact" if choice.exact else ("below" if choice.length < requested else "above")
        pairs.append(("profile length", f"{view.length_text(profile.seq_len)} ({rule}, {choice.ratio:.2g}x)"))
    else:
        pairs.append(("profile length", view.length_text(profile.seq_len)))
    pairs += [
        ("calibration", profile.calibration_kind),
        ("run", profile.run),
        ("device", profile.device),
        ("content hash", profile.content_hash),
        ("updated", view.when(profile.updated_at)),
        ("rel_error", metrics.rel_error),
        ("retained mass", f"{view.fmt(metrics.retained_mass_mean)} mean, {view.fmt(metrics.retained_mass_min)} min"),
        ("density", metrics.density),
        ("latency_ms", f"{view.fmt(metrics.latency_ms)} ({'measured' if metrics.latency_measured else 'estimated' if metrics.latency_measured is not None else '-'})"),
        ("speedup", metrics.speedup),
    ]
    for key, value in sorted(metrics.extra.items()):
        pairs.append((key, value))
    lines = [view.pairs(pairs), "", "global config"]
    lines.append(view.pairs(list(profile.config.config.model_dump().items())))
    overrides = []
    for layer, override in sorted(profile.config.layers.items()):
        if (override.alpha, override.window_ratio, override.sample_ratio) != (None, None, None):
            overrides.append((layer, "*", override.alpha, override.window_ratio, override.sample_ratio))
        for head, head_override in sorted(override.heads.items()):
            overrides.append((layer, head, head_override.alpha, head_override.window_ratio, None))
    if overrides:
        lines += ["", "overrides"]
        lines.append(view.table(("LAYER", "HEAD", "ALPHA", "WINDOW", "SAMPLE"), overrides))
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    """A model: its profiles and runs, or (with --length) the profile that length gets."""
    with view.open_store(args) as store:
        if args.length is not None:
            profile, choice = store.resolve_profile(args.model, args.length, allow_synthetic=args.allow_synthetic)
            if choice.far:
                print(
                    f"sattn-store: warning: the profile used for {view.length_text(args.length)} was tuned at "
                    f"{view.length_text(choice.length)} ({choice.ratio:.1f}x away); tune that length for better "
                    "parameters",
                    file=sys.stderr,
                )
            if args.format == "json":
                data = {
                    "requested_length": args.length,
                    "bucket": {"length": choice.length, "exact": choice.exact, "ratio": choice.ratio, "far": choice.far},
                    "profile": view.dump(profile),
                }
                print(view.to_json(data), file=out)
            else:
                print(_profile_details(profile, args.length, choice), file=out)
            return view.EXIT_OK
        model = store.get_model(args.model)
        profiles = store.list_profiles(args.model)
        runs = store.list_runs(args.model)
    if args.format == "json":
        data = {"model": view.dump(model), "profiles": [view.dump(p) for p in profiles], "runs": [view.dump(r) for r in runs]}
        print(view.to_json(data), file=out)
        return view.EXIT_OK
    geometry = f"{model.num_layers} layers, {model.num_q_heads} query heads, {model.num_kv_heads} KV heads, head dim {model.head_dim}"
    print(view.pairs([
        ("model", model.name),
        ("hf id / path", model.hf_id),
        ("family", model.family),
        ("geometry", geometry),
        ("trained context", view.length_text(model.trained_context)),
    ]), file=out)
    print("\nprofiles", file=out)
    rows = [
        (view.length_text(p.seq_len), p.calibration_kind, *view.mode_and_params(p.config.config, p.seq_len), view.overrides_text(p),
         p.metrics.rel_error, p.metrics.speedup, p.run, p.content_hash[:12])
        for p in profiles
    ]
    print(view.table(("LENGTH", "CALIB", "MODE", "ALPHA", "WINDOW", "SAMPLE", "OVERRIDES", "REL_ERR", "SPEEDUP", "RUN",
                  "HASH"), rows), file=out)
    print("\nruns", file=out)
    print(_runs_table(runs), file=out)
    return view.EXIT_OK


def _runs_table(runs: Sequence[Any]) -> str:
    rows = [
        (r.name, r.model, ",".join(view.length_text(n) for n in r.lengths), r.objective, r.max_error, r.calibration.kind,
         r.device, r.status, view.when(r.started_at), view.when(r.finished_at))
        for r in runs
    ]
    return view.table(("RUN", "MODEL", "LENGTHS", "OBJECTIVE", "MAX_ERR", "CALIB", "DEVICE", "STATUS", "STARTED", "FINISHED"), rows)


def cmd_runs(args: argparse.Namespace, out: TextIO) -> int:
    """The tuning runs."""
    with view.open_store(args) as store:
        runs = store.list_runs(args.model)
        counts = {r.name: len(store.trials(r.name)) for r in runs}
    if args.format == "json":
        print(view.to_json([{**view.dump(r), "trials": counts[r.name]} for r in runs]), file=out)
    else:
        print(_runs_table(runs) if runs else f"no runs in {store.url}", file=out)
    return view.EXIT_OK


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
    with view.open_store(args) as store:
        front = store.pareto(args.model, args.length, run=args.run, calibration_kind=args.calibration)
        if not front:
            lengths = ", ".join(view.length_text(n) for n in store.tuned_lengths(args.model)) or "none"
            print(
                f"sattn-store: error: no complete trial of {args.model} at {view.length_text(args.length)} with both "
                f"error and latency; lengths with trials: {lengths}",
                file=sys.stderr,
            )
            return view.EXIT_ERROR
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
            title=f"{args.model} at {view.length_text(args.length)}", trials=trials,
            error=lambda t: t.metrics.rel_error, error_label="relative L2 error", budget=_budget(runs),
            chosen=(on_front or chosen or [None])[0])])
    if args.format == "json":
        data = {"model": args.model, "seq_len": args.length, "plot": args.plot,
                "front": [{**view.dump(t), "chosen": (t.run, t.study, t.number) in chosen_keys} for t in front]}
        print(view.to_json(data), file=out)
        return view.EXIT_OK
    rows = []
    for t in front:
        config = t.config.config if t.config is not None else None
        mode, alpha, window, sample = view.mode_and_params(config, t.seq_len) if config else ("-", None, None, None)
        rows.append((
            "*" if (t.run, t.study, t.number) in chosen_keys else "", t.run, t.number, mode,
            t.metrics.rel_error, t.metrics.latency_ms,
            None if t.metrics.latency_measured is None else ("measured" if t.metrics.latency_measured else "estimated"),
            t.metrics.speedup, t.metrics.density, t.metrics.retained_mass_min, alpha, window, sample,
        ))
    headers = ("CHOSEN", "RUN", "TRIAL", "MODE", "REL_ERR", "LATENCY_MS", "LATENCY", "SPEEDUP", "DENSITY",
               "RETAINED_MIN", "ALPHA", "WINDOW", "SAMPLE")
    print(view.table(headers, rows), file=out)
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
    return view.EXIT_OK
