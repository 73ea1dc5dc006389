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
