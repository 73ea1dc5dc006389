"""The end of a tuning run: the summary table and the Pareto plot (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import Any, TextIO

from sampleattn.lengths import format_length
from sampleattn.tables import format_table

__all__ = ["format_summary", "plot_pareto"]


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def format_summary(report: Any) -> str:
    """The summary table of a `TuneReport` as text (one row per length)."""
    from .search import chosen_summary

    rows = chosen_summary(report)
    latency = "latency_ms (measured)" if report.device == "cuda" else "latency_ms (estimated)"
    error = "KL (nats)" if report.objective == "model" else "rel_error"
    headers = ["length", "trials", "failed", "feasible", "pareto", "chosen", "mode", "alpha", "window", "sample",
               "gqa", "layers", error, "density", latency, "dense_ms", "speedup"]
    keys = ["length", "trials", "failed", "feasible", "pareto", "chosen", "mode", "alpha", "window", "sample",
            "gqa", "layers", "error", "density", "latency_ms", "dense_ms", "speedup"]
    table = [[_fmt(row.get(k)) for k in keys] for row in rows]
    lines = format_table(headers, table).splitlines()
    notes = [
        f"budget: {error} <= {report.max_error:g}; chosen = fastest feasible trial ('*': per-layer stage, "
        "'layers' = layers with their own alpha/window); mode dense: alpha, window, sample do nothing ('-')",
        f"{report.evaluated} trial(s) evaluated in {report.search_seconds:.0f} s of search on {report.workers} "
        f"worker(s) ({report.trials_per_hour:.0f} trials/hour); {report.seconds:.0f} s in all"
        + (f"; {report.replaced_workers} worker(s) replaced" if report.replaced_workers else ""),
    ]
    for r in report.lengths:
        if r.per_layer:
            notes.append(f"{format_length(r.length)} per-layer stage: {r.per_layer.get('reason', '')}")
        if r.chosen is None:
            notes.append(f"{format_length(r.length)}: no feasible trial, no profile saved")
    if report.device != "cuda":
        from sampleattn.store.display import ESTIMATED_NOTE

        notes.append(ESTIMATED_NOTE)
    return "\n".join(lines + [""] + notes)


def print_summary(report: Any, out: TextIO) -> None:
    print(format_summary(report), file=out)
    model = report.run.split("/")[0]
    first = format_length(report.lengths[0].length) if report.lengths else "<length>"
    print(f"\nstore: {report.store_url}\nrun:   {report.run}\n"
          f"see:   sattn-store --store {report.store_url} show {model}\n"
          f"       sattn-store --store {report.store_url} pareto {model} --length {first}", file=out)


def plot_pareto(report: Any, path: str) -> str:
    """Write the trials and Pareto front of each length (error vs latency, the budget, the chosen
    trial) to a PNG with `sampleattn.store.display.plot_fronts`, the plot ``sattn-store pareto
    --plot`` draws too; returns ``path``."""
    from sampleattn.store import ProfileStore
    from sampleattn.store.display import FrontPanel, plot_fronts

    model = report.run.split("/")[0]
    if report.objective == "model":
        def error(t):
            return t.metrics.extra.get("kl_divergence", 0.0)
        label = "KL (nats)"
    else:
        def error(t):
            return t.metrics.rel_error
        label = "relative L2 error"
    panels = []
    with ProfileStore(report.store_url, readonly=True) as store:
        for r in report.lengths:
            trials = [t for t in store.trials(report.run, seq_len=r.length, states=["complete"])
                      if t.metrics.rel_error is not None and t.metrics.latency_ms is not None]
            chosen = None
            if r.chosen is not None:
                chosen = next((t for t in trials if t.study == r.chosen["study"] and t.number == r.chosen["trial"]),
                              None)
            panels.append(FrontPanel(title=f"{model} @ {format_length(r.length)}", trials=trials, error=error,
                                     error_label=label, budget=report.max_error, chosen=chosen))
    plot_fronts(path, panels)
    return path
