"""Summaries, the markdown table, JSON and PNG plots of an evaluation's rows.

`summarize(result)` pools the rows per (length, method): density is the mean over inputs and
layers; KL and top-1 are per token over all positions of all inputs; perplexity is
``exp(total NLL / tokens)``, and ``ppl_delta`` its relative change against full attention on the
same inputs. The needle score is the percentage of (length, depth) prompts whose key fact the
greedy answer recovers.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from sampleattn.tables import format_table

__all__ = ["load_results", "markdown", "merge_results", "plot", "summarize", "write_outputs"]

FAMILY_ORDER = ["full", "sample_attention", "sample_attention_rescored", "tuned", "pooled", "rescored_proto", "oracle",
                "window", "streamingllm", "bigbird", "vertical_slash"]


def _order(method: str, family: str) -> tuple:
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else 99, method)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """{"fidelity": [per (length, method) dicts], "needle": [per method dicts]}."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in result.get("fidelity", []):
        groups[(row["length"], row["method"])].append(row)
    fidelity = []
    for (length, method), rows in groups.items():
        tokens = sum(r["tokens"] for r in rows)
        nll_tokens = sum(r["nll_tokens"] for r in rows)
        ppl = math.exp(sum(r["nll_sum"] for r in rows) / nll_tokens)
        ppl_full = math.exp(sum(r["nll_full_sum"] for r in rows) / nll_tokens)
        needle = [n for n in result.get("needle", []) if n["method"] == method]
        fidelity.append({
            "length": length, "method": method, "family": rows[0]["family"], "alpha": rows[0]["alpha"],
            "matched_to": rows[0]["matched_to"], "inputs": len(rows),
            "density": sum(r["density"] for r in rows) / len(rows),
            "kl": sum(r["kl_sum"] for r in rows) / tokens,
            "top1": sum(r["top1_sum"] for r in rows) / tokens,
            "ppl": ppl, "ppl_full": ppl_full, "ppl_delta": ppl / ppl_full - 1.0,
            "needle": (100.0 * sum(n["correct"] for n in needle) / len(needle)) if needle else None,
        })
    fidelity.sort(key=lambda r: (r["length"], _order(r["method"], r["family"])))
    per_method: dict[str, list[dict]] = defaultdict(list)
    for row in result.get("needle", []):
        per_method[row["method"]].append(row)
    needle = []
    for method, rows in per_method.items():
        by_length: dict[int, list[bool]] = defaultdict(list)
        for r in rows:
            by_length[r["length"]].append(r["correct"])
        needle.append({
            "method": method, "family": rows[0]["family"], "prompts": len(rows),
            "score": 100.0 * sum(r["correct"] for r in rows) / len(rows),
            "density": sum(r["density"] for r in rows) / len(rows),
            "by_length": {str(k): 100.0 * sum(v) / len(v) for k, v in sorted(by_length.items())},
        })
    needle.sort(key=lambda r: _order(r["method"], r["family"]))
    return {"fidelity": fidelity, "needle": needle, "not_run": not_run_summary(result)}


def not_run_summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """What a run (or merged runs) did not run: per (task, method, reason), the lengths and the
    number of inputs (from ``meta["not_run"]``)."""
    metas = result.get("meta", {}).get("runs") or [result.get("meta", {})]
    groups: dict[tuple, dict[str, Any]] = {}
    for meta in metas:
        for r in meta.get("not_run", []):
            g = groups.setdefault((r["task"], r["method"], r["reason"]),
                                  {"task": r["task"], "method": r["method"], "reason": r["reason"],
                                   "lengths": set(), "inputs": 0})
            g["lengths"].add(r["length"])
            g["inputs"] += 1
    out = [{**g, "lengths": sorted(g["lengths"])} for g in groups.values()]
    return sorted(out, key=lambda g: (g["task"], g["method"], g["reason"]))


def markdown(summary: dict[str, Any]) -> str:
    """The markdown tables of a summary."""
    lines: list[str] = []
    lengths = sorted({r["length"] for r in summary["fidelity"]})
    for length in lengths:
        rows = [r for r in summary["fidelity"] if r["length"] == length]
        lines += [f"#### Fidelity against full attention, {length:,} tokens ({rows[0]['inputs']} window(s) of the essays)", "",
                  format_table(("method", "density", "KL (nats/token)", "top-1 agreement", "perplexity", "ppl change"),
                               [(r["method"], f"{r['density']:.3f}", f"{r['kl']:.4f}", f"{100 * r['top1']:.1f}%",
                                 f"{r['ppl']:.3f}", f"{100 * r['ppl_delta']:+.1f}%") for r in rows],
                               markdown=True, align="lrrrrr"), ""]
    if summary["needle"]:
        all_lengths = sorted({int(k) for r in summary["needle"] for k in r["by_length"]})
        lines += ["#### Needle in a haystack (exact recovery of the key fact, % of prompts)", "",
                  format_table(("method", "prefill density", "all", *(f"{n:,}" for n in all_lengths)),
                               [(r["method"], f"{r['density']:.3f}", f"{r['score']:.0f} ({r['prompts']})",
                                 *(f"{r['by_length'].get(str(n), float('nan')):.0f}" for n in all_lengths))
                                for r in summary["needle"]],
                               markdown=True, align="lrr" + "r" * len(all_lengths)), ""]
    if summary.get("not_run"):
        lines += ["#### Not run", "",
                  format_table(("task", "method", "lengths", "inputs", "reason"),
                               [(g["task"], g["method"], ", ".join(f"{n:,}" for n in g["lengths"]), g["inputs"],
                                 g["reason"]) for g in summary["not_run"]], markdown=True, align="lllrl"), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """accuracy_vs_density.png and needle_heatmap.png in ``out_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    lengths = sorted({r["length"] for r in summary["fidelity"]})
    if lengths:
        fig, axes = plt.subplots(2, len(lengths), figsize=(5.5 * len(lengths), 8), squeeze=False)
        markers = {"sample_attention": "o", "sample_attention_rescored": "h", "tuned": "*", "pooled": "D",
                   "rescored_proto": "d", "oracle": "P", "window": "s",
                   "streamingllm": "^", "bigbird": "v", "vertical_slash": "X"}
        # One colour per method family across every panel (a panel missing a family must not
        # shift the others' colours).
        families = sorted({r["family"] for r in summary["fidelity"] if r["family"] != "full"},
                          key=lambda f: _order(f, f))
        palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        colors = {family: palette[i % len(palette)] for i, family in enumerate(families)}
        for col, length in enumerate(lengths):
            rows = [r for r in summary["fidelity"] if r["length"] == length and r["family"] != "full"]
            for family in [f for f in families if any(r["family"] == f for r in rows)]:
                fam = sorted((r for r in rows if r["family"] == family), key=lambda r: r["density"])
                x = [r["density"] for r in fam]
                style = {"marker": markers.get(family, "o"), "color": colors[family], "label": family}
                axes[0][col].plot(x, [max(r["kl"], 1e-6) for r in fam], **style)
                axes[1][col].plot(x, [100 * r["top1"] for r in fam], **style)
            axes[0][col].set_yscale("log")
            axes[0][col].set_title(f"{length:,} tokens")
            axes[0][col].set_ylabel("KL to full attention (nats/token)")
            axes[1][col].set_ylabel("top-1 agreement (%)")
            axes[1][col].set_xlabel("density (computed / visible pairs)")
            for ax in (axes[0][col], axes[1][col]):
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "accuracy_vs_density.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    needle = result.get("needle", [])
    if needle:
        methods = [r["method"] for r in summary["needle"]]
        nl = sorted({r["length"] for r in needle})
        depths = sorted({r["depth"] for r in needle})
        ncols = min(4, len(methods))
        nrows = -(-len(methods) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 0.5 * len(nl) * nrows + 1.2 * nrows),
                                 squeeze=False)
        for i, method in enumerate(methods):
            ax = axes[i // ncols][i % ncols]
            grid = [[float("nan")] * len(depths) for _ in nl]
            for r in needle:
                if r["method"] == method:
                    grid[nl.index(r["length"])][depths.index(r["depth"])] = 1.0 if r["correct"] else 0.0
            ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
            ax.set_title(method, fontsize=8)
            ax.set_yticks(range(len(nl)), [f"{n:,}" for n in nl], fontsize=7)
            ax.set_xticks(range(len(depths)), [f"{int(100 * d)}" for d in depths], fontsize=7)
            ax.set_xlabel("depth (%)", fontsize=7)
        for j in range(len(methods), nrows * ncols):
            axes[j // ncols][j % ncols].axis("off")
        fig.tight_layout()
        path = out_dir / "needle_heatmap.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def load_results(path: str | Path) -> dict[str, Any]:
    """A results.json written by `write_outputs`, or a folder holding one (or, from a run that
    was cut off, its results.partial.json)."""
    path = Path(path)
    if path.is_dir():
        full = path / "results.json"
        path = full if full.exists() else path / "results.partial.json"
    return json.loads(path.read_text())


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of several runs in one result (e.g. fidelity and needle run as separate commands)."""
    merged: dict[str, Any] = {"meta": {"runs": [r["meta"] for r in results]}, "fidelity": [], "needle": []}
    for r in results:
        merged["fidelity"] += r.get("fidelity", [])
        merged["needle"] += r.get("needle", [])
    return merged


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """results.json (every row), summary.json, table.md and the PNG plots; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(markdown(summary))
    try:
        plot(result, summary, out)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'sampleattn[plot]')")
    return summary
