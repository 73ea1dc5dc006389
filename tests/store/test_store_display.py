"""What the Pareto table and plot show (store/display.py, `sattn-store pareto`): the mode, "-" for
a dense trial's sparse parameters, the chosen trial, estimated latencies, and the budget."""

from __future__ import annotations

import io

import pytest
from store_helpers import add_model, add_run, trial_metrics

from sampleattn import SampleAttentionConfig
from sampleattn.store import ProfileStore, cli, display

LENGTH = 4096


@pytest.fixture
def db(tmp_path):
    """A CPU run at 4k: the dense baseline, two sampled trials and a rescored one (estimated
    latencies), the second sampled trial stored as the profile; budget 0.05."""
    path = tmp_path / "store.sqlite"
    with ProfileStore(path, create=True) as store:
        add_model(store)
        run = add_run(store, lengths=("4k",), max_error=0.05)
        est = {"latency_measured": False, "device": "cpu"}
        dense = {"config": {"alpha": 0.95, "window_ratio": 0.08, "sample_ratio": 0.05, "dense_below": 2 * LENGTH}}
        trials = [
            (0, dense, trial_metrics(0.0, 4.0, **est)),
            (1, {"config": {"alpha": 0.8, "window_ratio": 0.02, "dense_below": 0}}, trial_metrics(0.09, 1.0, **est)),
            (2, {"config": {"alpha": 0.9, "window_ratio": 0.04, "dense_below": 0}}, trial_metrics(0.04, 1.5, **est)),
            (3, {"config": {"alpha": 0.9, "window_ratio": 0.04, "dense_below": 0, "selection": "rescored"}},
             trial_metrics(0.02, 2.5, **est)),
        ]
        for number, config, metrics in trials:
            metrics.pop("device")
            store.record_trial(run, number, seq_len=LENGTH, state="complete", config=config, metrics=metrics)
        store.save_profile("llama-toy", LENGTH, trials[2][1], run=run, metrics=trials[2][2])
        store.finish_run(run)
    return path


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(args), out=out)
    return code, out.getvalue()


def test_selection_mode_reads_the_rule() -> None:
    config = SampleAttentionConfig()
    assert display.selection_mode(config, dense=True) == "dense"
    assert display.selection_mode(config, dense=False) == "sampled"
    assert display.selection_mode(SampleAttentionConfig(selection="rescored"), dense=False) == "rescored"
    assert display.selection_mode({"selection": "rescored"}, dense=False) == "rescored"

    class Typed:  # a rule given as an object with a name
        name = "block"

    assert display.selection_mode(type("C", (), {"selection": Typed()})(), dense=False) == "block"
    assert display.is_dense(config, 16384) and not display.is_dense(config, 32768)


def test_pareto_table_marks_mode_dense_chosen_and_estimates(db) -> None:
    code, text = run_cli("--store", str(db), "pareto", "llama-toy", "--length", "4k")
    assert code == 0
    table, notes = text.split("\n\n", 1)
    header, _, *rows = table.splitlines()
    assert header.split()[:4] == ["CHOSEN", "RUN", "TRIAL", "MODE"]
    cells = {int(r.split()[2]) if r.startswith("*") else int(r.split()[1]): r.split() for r in rows}
    dense = cells[0]
    assert dense[2] == "dense" and dense[-3:] == ["-", "-", "-"]  # not "0.95 0.08 0.05"
    assert cells[2][0] == "*" and cells[2][3] == "sampled" and cells[2][-3:] == ["0.9", "0.04", "0.05"]
    assert cells[3][2] == "rescored"
    assert all(r.split()[-7] == "estimated" for r in rows)
    assert "* = the trial stored as the profile at this length" in notes
    assert "estimated from a cost model" in notes


def test_pareto_json_marks_the_chosen(db) -> None:
    import json

    code, text = run_cli("--store", str(db), "--format", "json", "pareto", "llama-toy", "--length", "4k")
    assert code == 0
    assert [t["number"] for t in json.loads(text)["front"] if t["chosen"]] == [2]


def test_pareto_plot_shows_budget_chosen_and_estimate(db, tmp_path, monkeypatch) -> None:
    figures = []
    real = display.plot_fronts
    monkeypatch.setattr(display, "plot_fronts", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1])
    png = tmp_path / "front.png"
    code, text = run_cli("--store", str(db), "pareto", "llama-toy", "--length", "4k", "--plot", str(png))
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    (ax,) = figures[0].axes
    assert "ESTIMATED" in ax.get_xlabel() and "cost model" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "budget 0.05" in labels and "chosen (trial 2)" in labels
    assert "over budget (1)" in labels and "within budget (3)" in labels
    budget_lines = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.05, 0.05]]
    assert budget_lines  # the horizontal budget line at 0.05


def test_measured_latencies_are_labelled_measured() -> None:
    assert display.latency_label([True, True]) == "latency (ms), measured"
    assert "ESTIMATED" in display.latency_label([True, False])
