"""The end of a tuning run: the summary table and the Pareto plot (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import Any, TextIO

from sampleattn.lengths import format_length
from sampleattn.tables import format_table

__all__ = ["chosen_summary", "format_summary", "plot_pareto", "print_summary"]


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def chosen_summary(report: Any) -> list[dict[str, Any]]:
    """One row per length for the summary table (plain values; ``None`` for the sparse parameters
    of a dense choice)."""
    from sampleattn.store.display import is_dense, selection_mode, sparse_params

    rows = []
    for r in report.lengths:
        row: dict[str, Any] = {"length": format_length(r.length), "trials": r.complete, "failed": r.failed,
                               "feasible": r.feasible, "pareto": r.pareto}
        if r.chosen is not None:
            cfg, m = r.chosen.config.config, r.chosen.metrics
            dense = is_dense(cfg, r.length)
            alpha, window, sample = sparse_params(cfg, dense)
            row.update({
                "chosen": f"#{r.chosen.number}" + ("*" if r.chosen.study.endswith("/per-layer") else ""),
                "alpha": alpha, "window": window, "sample": sample,
                "gqa": None if dense else cfg.gqa_granularity, "mode": selection_mode(cfg, dense),
                "layers": len(r.chosen.config.layers),
                "error": report.objective_type.error(m), "density": m.density,
                "latency_ms": m.latency_ms, "dense_ms": m.dense_latency_ms,
                "speedup": (m.dense_latency_ms / m.latency_ms) if m.latency_ms else None,
            })
        rows.append(row)
    return rows


def format_summary(report: Any) -> str:
    """The summary table of a `TuneReport` as text (one row per length)."""
    rows = chosen_summary(report)
    latency = "latency_ms (measured)" if report.device == "cuda" else "latency_ms (estimated)"
    error = report.objective_type.label
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
            notes.append(f"{format_length(r.length)} per-layer stage: {r.per_layer.reason}")
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
    objective = report.objective_type

    def error(t):
        return objective.error(t.metrics)

    panels = []
    with ProfileStore(report.store_url, readonly=True) as store:
        for r in report.lengths:
            trials = [t for t in store.trials(report.run, seq_len=r.length, states=["complete"])
                      if t.metrics.rel_error is not None and t.metrics.latency_ms is not None]
            chosen = None
            if r.chosen is not None:
                chosen = next((t for t in trials if (t.study, t.number) == (r.chosen.study, r.chosen.number)), None)
            panels.append(FrontPanel(title=f"{model} @ {format_length(r.length)}", trials=trials, error=error,
                                     error_label=objective.axis_label, budget=report.max_error, chosen=chosen))
    plot_fronts(path, panels)
    return path
