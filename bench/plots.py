"""PNG plots of benchmark rows: speed-up against length, and time by stage (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path


def plot_results(rows: list[dict], out_dir: Path) -> list[Path]:
    """Write ``speedup.png`` and ``stages.png`` to ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        if isinstance(r.get("speedup_vs_cudnn"), float):
            key = (r["geometry"], r["alpha"], r["window_ratio"], r["sample_ratio"])
            series.setdefault(key, []).append((r["seqlen"], r["speedup_vs_cudnn"]))
    for (geom, alpha, window, sample), points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=f"{geom} a={alpha} w={window} s={sample}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("speed-up vs SDPA cuDNN")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "speedup.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['geometry']} {r['seqlen'] // 1024}k a{r['alpha']}" for r in rows]
    plan_ms = [r["plan_ms"] for r in rows]
    attn_ms = [r["attention_ms"] for r in rows]
    ax.bar(labels, plan_ms, label="plan (stages 1-2)")
    ax.bar(labels, attn_ms, bottom=plan_ms, label="sparse attention (stage 3)")
    ax.set_ylabel("ms")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "stages.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _speedup(r: dict):
    return r.get("speedup_vs_cudnn_measured") or r.get("speedup_vs_cudnn")


def suite_series(report: dict) -> dict[str, list[tuple[int, float]]]:
    """The speed-up curves of a suite report: ``{name: [(seqlen, speed-up vs cuDNN), ...]}``
    sorted by length. Real inputs (middle band, batch 1) at alpha 0.95 / w8% s5% and at w1% s1%
    (256K-1M), and synthetic inputs; a 1M row counts against cuDNN measured at 1M when the run
    measured it. Dense rows, and rows without a speed-up, are left out."""
    cases = [r for r in report["rows"] if "total_ms" in r]

    def point(r):
        return (r["window_ratio"], r["sample_ratio"])

    chosen = {
        "real (SmolLM2 heads, middle band), w8% s5%": [
            r for r in cases if r["part"] in ("breakeven", "main128k", "mid512k") and r["inputs"] != "synthetic"
            and "real-mid" in r["label"] and point(r) == (0.08, 0.05) and r.get("batch", 1) == 1],
        "real, middle band, w1% s1% (256K-1M)": [r for r in cases if r["part"] in ("1m", "mid512k")
                                                 and point(r) == (0.01, 0.01)],
        "synthetic (structured_qkv), w8% s5%": [r for r in cases if r["part"] in ("breakeven", "synth128k", "synth1m")
                                                and r["inputs"] == "synthetic"],
    }
    return {name: sorted((r["seqlen"], _speedup(r)) for r in rows if isinstance(_speedup(r), float))
            for name, rows in chosen.items()}


def stage_bars(report: dict) -> tuple[list[tuple[str, float, float]], float | None]:
    """``(label, plan ms, stage-3 ms)`` of the suite's 128K cases in the run's geometry, one bar per
    configuration (parts that repeat the main case, such as the grid, are left out), and SDPA
    cuDNN's time at that length (None if not measured)."""
    stage_parts = ("main128k", "synth128k", "alpha099", "alphas128k", "rescored")
    sizes = report.get("sizes", {})
    long = [r for r in report["rows"] if "total_ms" in r and r["seqlen"] == sizes.get("long", 131072)
            and r["geometry"] == sizes.get("geometry", "llama3") and r["part"] in stage_parts]
    bars = [(r["label"].replace("128k ", "").replace(" (reference)", " ref").replace(" (choice)", ""),
             r["plan_ms"], r["attention_ms"]) for r in long]
    return bars, next((r["cudnn_ms"] for r in long if isinstance(r.get("cudnn_ms"), float)), None)


def plot_suite(report: dict, out_dir: Path, prefix: str = "suite-") -> list[Path]:
    """Two PNGs from a suite's ``suite.json`` (``bench/suite.py``): `suite_series` against length,
    and `stage_bars` with SDPA cuDNN's time at 128K. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (name, points), marker, dy in zip(suite_series(report).items(), "osD", (6, 6, -12)):
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=name)
            for n, x in points:
                ax.annotate(f"{x:.2f}x", (n, x), textcoords="offset points", xytext=(0, dy), ha="center", fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("speed-up vs SDPA cuDNN (alpha 0.95)")
    ax.set_title(f"{report.get('env', {}).get('device', '')}, Llama-3-8B geometry, bf16", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / f"{prefix}speedup.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    bars, cudnn = stage_bars(report)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    labels, plan_ms, attn_ms = [b[0] for b in bars], [b[1] for b in bars], [b[2] for b in bars]
    ax.bar(labels, plan_ms, label="plan (stages 1-2)")
    ax.bar(labels, attn_ms, bottom=plan_ms, label="sparse attention (stage 3)")
    if cudnn:
        ax.axhline(cudnn, color="black", ls="--", lw=0.8, label=f"SDPA cuDNN {cudnn:.0f} ms")
    ax.set_ylabel("ms at 128K")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / f"{prefix}stages.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def merge_reports(reports: list[dict]) -> dict:
    """One report from the ``suite.json`` of several runs of the suite (parts run in separate
    calls): the first report's env and sizes, every report's rows in order."""
    if not reports:
        raise ValueError("merge_reports needs at least one suite.json report")
    return {**reports[0], "rows": [row for report in reports for row in report["rows"]]}


def load_report(path: str | Path) -> dict:
    """A suite's ``suite.json``, or its ``results.jsonl`` (the rows it appends as it goes, which
    survive when ``suite.json`` did not come back): then only ``rows``, so list a ``suite.json``
    of another run first when merging, for the env and the sizes (not the same run's: its rows
    would count twice). A last line cut short (a run killed while writing it) is left out."""
    import json

    text = Path(path).read_text()
    if not str(path).endswith(".jsonl"):
        return json.loads(text)
    lines = [line for line in text.splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON (only the last line may be cut short)") from None
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    """``python -m sampleattn.bench.plots SUITE_JSON [SUITE_JSON ...] --out DIR [--prefix P]``: the
    suite's PNGs, from one run or from the rows of several (parts run in separate calls); a
    ``results.jsonl`` may stand for a ``suite.json`` (`load_report`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sampleattn.bench.plots", description=main.__doc__)
    parser.add_argument("suite_json", nargs="+")
    parser.add_argument("--out", default=".")
    parser.add_argument("--prefix", default="suite-")
    args = parser.parse_args(argv)
    report = merge_reports([load_report(p) for p in args.suite_json])
    for path in plot_suite(report, Path(args.out), args.prefix):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
