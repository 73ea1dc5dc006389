"""The end of a tuning run: the summary table and the Pareto plot (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import Any, TextIO

from sampleattn.lengths import format_length

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
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    notes = [
        f"budget: {error} <= {report.max_error:g}; chosen = fastest feasible trial ('*': per-layer stage, "
        "'layers' = layers with their own alpha/window)",
        f"{report.evaluated} trial(s) evaluated in {report.search_seconds:.0f} s of search on {report.workers} "
        f"worker(s) ({report.trials_per_hour:.0f} trials/hour); {report.seconds:.0f} s in all"
        + (f"; {report.replaced_workers} worker(s) replaced" if report.replaced_workers else ""),
    ]
    for r in report.lengths:
        if r.per_layer:
            notes.append(f"{format_length(r.length)} per-layer stage: {r.per_layer.get('reason', '')}")
        if r.chosen is None:
            notes.append(f"{format_length(r.length)}: no feasible trial, no profile saved")
    return "\n".join(lines + [""] + notes)


def print_summary(report: Any, out: TextIO) -> None:
    print(format_summary(report), file=out)
    model = report.run.split("/")[0]
    first = format_length(report.lengths[0].length) if report.lengths else "<length>"
    print(f"\nstore: {report.store_url}\nrun:   {report.run}\n"
          f"see:   sattn-store --store {report.store_url} show {model}\n"
          f"       sattn-store --store {report.store_url} pareto {model} --length {first}", file=out)


def plot_pareto(report: Any, path: str) -> str:
    """Write the trials and Pareto front of each length (error vs latency) to a PNG; returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sampleattn.store import ProfileStore

    model = report.run.split("/")[0]
    n = max(1, len(report.lengths))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    with ProfileStore(report.store_url, readonly=True) as store:
        for ax, r in zip(axes[0], report.lengths):
            trials = [t for t in store.trials(report.run, seq_len=r.length, states=["complete"])
                      if t.metrics.rel_error is not None and t.metrics.latency_ms is not None]
            err = (lambda t: t.metrics.extra.get("kl_divergence", 0.0)) if report.objective == "model" else (
                lambda t: t.metrics.rel_error)
            ok = [t for t in trials if err(t) <= report.max_error]
            bad = [t for t in trials if err(t) > report.max_error]
            ax.scatter([t.metrics.latency_ms for t in bad], [err(t) for t in bad], c="tab:gray", s=18,
                       label="over budget")
            ax.scatter([t.metrics.latency_ms for t in ok], [err(t) for t in ok], c="tab:blue", s=18, label="feasible")
            front = sorted(((t.metrics.latency_ms, err(t)) for t in trials), key=lambda p: p[0])
            pareto, best = [], float("inf")
            for lat, e in front:
                if e < best:
                    pareto.append((lat, e))
                    best = e
            if pareto:
                ax.plot([p[0] for p in pareto], [p[1] for p in pareto], "-o", c="tab:orange", ms=4,
                        label="Pareto front")
            if r.chosen is not None:
                ax.scatter([r.chosen["latency_ms"]], [r.chosen["error"]], marker="*", s=220, c="tab:red",
                           zorder=5, label="chosen")
            ax.axhline(report.max_error, ls="--", c="tab:red", lw=0.8)
            ax.set_title(f"{model} @ {format_length(r.length)}")
            ax.set_xlabel("latency (ms, " + ("measured" if report.device == "cuda" else "estimated") + ")")
            ax.set_ylabel("KL (nats)" if report.objective == "model" else "relative L2 error")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
