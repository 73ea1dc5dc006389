"""The tuner's summary table and Pareto plot (tuner/report.py): the mode column, "-" for a dense
choice's sparse parameters, estimated CPU latencies, the budget and the chosen trial."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))

from store_helpers import add_model, add_run, trial_metrics  # noqa: E402

from sampleattn.store import ProfileStore, display  # noqa: E402
from sampleattn.tuner.report import format_summary, plot_pareto  # noqa: E402
from sampleattn.tuner.search import LengthResult, TuneReport  # noqa: E402

RUN = "llama-toy/1k,2k/real"


def _report(tmp_path) -> TuneReport:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    dense = {"alpha": 0.95, "window_ratio": 0.08, "sample_ratio": 0.05, "gqa_granularity": "query_head",
             "dense_below": 2048}
    rescored = {"alpha": 0.9, "window_ratio": 0.04, "sample_ratio": 0.05, "gqa_granularity": "kv_head",
                "dense_below": 0, "selection": "rescored"}
    chosen = {}
    with ProfileStore(url, create=True) as store:
        add_model(store)
        add_run(store, name=RUN, lengths=("1k", "2k"), max_error=0.05)
        for length, study in ((1024, "s1k"), (2048, "s2k")):
            for number, (error, latency, config) in enumerate([(0.0, 4.0, dense), (0.03, 2.0, rescored),
                                                                (0.2, 1.0, rescored)]):
                chosen[study, number] = store.record_trial(
                    RUN, number, seq_len=length, state="complete", study=study,
                    config={"config": {**config, "dense_below": 2 * length if number == 0 else 0}},
                    metrics=trial_metrics(error, latency, latency_measured=False))
    return TuneReport(run=RUN, store_url=url, device="cpu", objective="layer", max_error=0.05, lengths=[
        LengthResult(1024, "s1k", complete=3, feasible=2, chosen=chosen["s1k", 0]),
        LengthResult(2048, "s2k", complete=3, feasible=2, chosen=chosen["s2k", 1]),
    ])


def test_summary_mode_and_dense_params(tmp_path) -> None:
    text = format_summary(_report(tmp_path))
    header, _, first, second = text.splitlines()[:4]
    cols = header.split()
    row1 = dict(zip(cols, first.split()))
    row2 = dict(zip(cols, second.split()))
    assert row1["mode"] == "dense" and (row1["alpha"], row1["window"], row1["sample"], row1["gqa"]) == ("-",) * 4
    assert row2["mode"] == "rescored" and (row2["alpha"], row2["window"]) == ("0.9", "0.04")
    assert "latency_ms (estimated)" in header
    assert "estimated from a cost model" in text


def test_plot_is_the_shared_one_with_budget_and_chosen(tmp_path, monkeypatch) -> None:
    figures = []
    real = display.plot_fronts
    monkeypatch.setattr(display, "plot_fronts", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1])
    png = plot_pareto(_report(tmp_path), str(tmp_path / "tune.png"))
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["llama-toy @ 1k", "llama-toy @ 2k"]
    for ax, chosen in zip(axes, (0, 1)):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "budget 0.05" in labels and f"chosen (trial {chosen})" in labels
        assert "ESTIMATED" in ax.get_xlabel()
