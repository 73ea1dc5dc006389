"""How trials and profiles are shown: the mode of a configuration, and the Pareto plot.

One home for what the tables of ``sattn-store`` and ``sattn-tune`` call a configuration's mode,
and for the plot both draw (``sattn-store pareto --plot``, ``sattn-tune --plot``), so that the
two read the same. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ESTIMATED_NOTE", "FrontPanel", "is_dense", "latency_label", "plot_fronts", "selection_mode",
           "sparse_params"]

#: The note under a table or plot with estimated latencies (tuner/evaluate.py's cost model).
ESTIMATED_NOTE = ("estimated: on the CPU the latency is not timed but estimated from a cost model "
                  "(dense SDPA time x (density + the selection rule's estimation passes)); measured: timed on the GPU")


def selection_mode(config: Any, dense: bool) -> str:
    """The mode a configuration runs in: ``"dense"`` (at the length in question), else the name
    of its column rule (``"sampled"``, ``"rescored"``, ...).

    ``config`` is a `SampleAttentionConfig` or its ``model_dump()``; ``config.selection`` (or
    ``config["selection"]``) is a rule (`sampleattn.rules`), its dump, or its name.
    """
    if dense:
        return "dense"
    selection = config.get("selection", "sampled") if isinstance(config, dict) else config.selection
    if isinstance(selection, dict):  # a dumped rule
        selection = selection.get("name", "sampled")
    return str(getattr(selection, "name", selection))


def is_dense(config: Any, length: int) -> bool:
    """True when the operator runs dense attention at ``length`` keys (``length < dense_below``)."""
    dense_below = config.get("dense_below", 0) if isinstance(config, dict) else config.dense_below
    return length < dense_below


def sparse_params(config: Any, dense: bool) -> tuple[Any, Any, Any]:
    """``(alpha, window_ratio, sample_ratio)``, or ``None`` for each when the config runs dense
    (they do nothing then; the tables show ``-``)."""
    if dense or config is None:
        return (None, None, None)
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
    return (get("alpha"), get("window_ratio"), get("sample_ratio"))


def latency_label(measured: Sequence[bool | None]) -> str:
    """The latency axis' label: measured on the GPU, or estimated by the CPU cost model."""
    if any(m is False for m in measured):
        return "latency (ms), ESTIMATED by the CPU cost model, not timed"
    return "latency (ms), measured"


@dataclass
class FrontPanel:
    """One panel of `plot_fronts`: the trials of one model and length.

    trials: complete `TrialRecord`s with a latency and an error. error: a trial's error on the
    y axis (relative L2 error, or KL). budget: the accuracy budget in the same terms (a
    horizontal line), or ``None``. chosen: the trial whose configuration was stored as the
    profile (a red star), or ``None``.
    """

    title: str
    trials: Sequence[Any]
    error: Callable[[Any], float]
    error_label: str
    budget: float | None = None
    chosen: Any = None


def plot_fronts(path: str, panels: Sequence[FrontPanel]) -> Any:
    """Write the panels side by side to a PNG at ``path``: every trial (gray over the budget,
    blue within it), the Pareto front, the budget line and the chosen trial; the latency axis
    says whether the latencies are measured or estimated. Returns the matplotlib figure (closed;
    its artists can still be read, which the tests do)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pareto import pareto_front

    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        trials = list(panel.trials)
        within = [t for t in trials if panel.budget is None or panel.error(t) <= panel.budget]
        over = [t for t in trials if panel.budget is not None and panel.error(t) > panel.budget]
        if over:
            ax.scatter([t.metrics.latency_ms for t in over], [panel.error(t) for t in over], s=16, c="0.65",
                       label=f"over budget ({len(over)})")
        ax.scatter([t.metrics.latency_ms for t in within], [panel.error(t) for t in within], s=16, c="tab:blue",
                   label=f"within budget ({len(within)})" if panel.budget is not None else f"trials ({len(within)})")
        front = pareto_front(trials, key=lambda t: (panel.error(t), t.metrics.latency_ms))
        if front:
            ax.step([t.metrics.latency_ms for t in front], [panel.error(t) for t in front], where="post",
                    c="tab:orange", lw=1.2, label=f"Pareto front ({len(front)})")
        if panel.budget is not None:
            ax.axhline(panel.budget, ls="--", c="tab:red", lw=0.9, label=f"budget {panel.budget:g}")
        if panel.chosen is not None:
            ax.scatter([panel.chosen.metrics.latency_ms], [panel.error(panel.chosen)], marker="*", s=240,
                       c="tab:red", zorder=5, label=f"chosen (trial {panel.chosen.number})")
        ax.set_title(panel.title)
        ax.set_xlabel(latency_label([t.metrics.latency_measured for t in trials]))
        ax.set_ylabel(panel.error_label)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
