"""bench.plots: what the suite's two plots show (the curves and bars read from a suite.json),
and the PNGs drawn from them, decoded and looked at."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sampleattn.bench import plots

matplotlib = pytest.importorskip("matplotlib")


def _case(part, label, inputs, seqlen, speedup, window=0.08, sample=0.05, **extra):
    return {"part": part, "label": label, "inputs": inputs, "geometry": "llama3", "seqlen": seqlen, "alpha": 0.95,
            "window_ratio": window, "sample_ratio": sample, "plan_ms": 1.0, "attention_ms": 2.0, "total_ms": 3.0,
            "cudnn_ms": 3.0 * speedup, "speedup_vs_cudnn": speedup, **extra}


REPORT = {"env": {"device": "test"}, "sizes": {"long": 131072, "geometry": "llama3"}, "rows": [
    {"part": "dense", "label": "dense baselines 131072", "seqlen": 131072, "cudnn": 9.0},
    _case("breakeven", "32k real-mid a0.95 w8% s5%", "smollm2-layer14", 32768, 1.5),
    _case("breakeven", "32k synthetic a0.95 w8% s5%", "synthetic", 32768, 1.1),
    _case("main128k", "128k real-mid a0.95 w8% s5%", "smollm2-layer14", 131072, 2.5, plan_ms=4.0, attention_ms=6.0),
    _case("main128k", "128k real-late a0.95 w8% s5%", "smollm2-layer24", 131072, 2.0),
    _case("grid128k", "128k real-mid a0.95 w2% s1%", "smollm2-layer14", 131072, 4.0, 0.02, 0.01),
    _case("synth128k", "128k synthetic a0.95 w8% s5%", "synthetic", 131072, 1.4),
    _case("1m", "1m real-mid a0.95 w1% s1%", "smollm2-layer14", 1048576, 8.0, 0.01, 0.01,
          speedup_vs_cudnn_measured=8.5),
]}


def test_suite_series_pick_the_rows_of_each_curve():
    series = plots.suite_series(REPORT)
    assert series == {
        "real (SmolLM2 heads, middle band), w8% s5%": [(32768, 1.5), (131072, 2.5)],  # not the late band
        "real, middle band, w1% s1% (256K-1M)": [(1048576, 8.5)],  # measured cuDNN over the extrapolated
        "synthetic (structured_qkv), w8% s5%": [(32768, 1.1), (131072, 1.4)],
    }
    bars, cudnn = plots.stage_bars(REPORT)
    assert bars == [("real-mid a0.95 w8% s5%", 4.0, 6.0), ("real-late a0.95 w8% s5%", 1.0, 2.0),
                    ("synthetic a0.95 w8% s5%", 1.0, 2.0)]  # the grid is left out
    assert cudnn == pytest.approx(7.5)


def _drawn(path, size):
    """The decoded PNG (height, width, channels) at the figure's size, and the fraction of its
    pixels that are not white."""
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == size
    return float((image[..., :3] < 0.95).any(axis=-1).mean())


def test_plot_suite_draws_the_curves_and_the_bars(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(REPORT))
    assert plots.main([str(path), "--out", str(tmp_path / "png"), "--prefix", "x-"]) == 0
    full = _drawn(tmp_path / "png" / "x-speedup.png", (480, 780))
    bars = _drawn(tmp_path / "png" / "x-stages.png", (504, 900))
    # an empty report draws the axes alone: the curves and bars are what the full one adds
    empty = {**REPORT, "rows": []}
    plots.plot_suite(empty, tmp_path / "empty", "e-")
    assert full > _drawn(tmp_path / "empty" / "e-speedup.png", (480, 780)) + 0.005
    assert bars > _drawn(tmp_path / "empty" / "e-stages.png", (504, 900)) + 0.02
    stages = matplotlib.image.imread(tmp_path / "png" / "x-stages.png")[..., :3]
    blue, orange = np.array([0.12, 0.47, 0.71]), np.array([1.0, 0.5, 0.05])  # plan, stage 3 (tab10)
    assert (np.abs(stages - blue).max(-1) < 0.05).sum() > 500
    assert (np.abs(stages - orange).max(-1) < 0.05).sum() > 500


def test_plots_merge_the_rows_of_several_runs(tmp_path):
    first = {"env": {"device": "first"}, "sizes": {"long": 131072, "geometry": "llama3"}, "rows": [
        _case("main128k", "128k real-mid a0.95 w8% s5%", "smollm2-layer14", 131072, 2.5)]}
    second = {"env": {"device": "second"}, "sizes": {"long": 131072, "geometry": "llama3"}, "rows": [
        _case("mid512k", "256k real-mid a0.95 w8% s5%", "smollm2-layer14", 262144, 2.9),
        _case("mid512k", "256k real-mid a0.95 w1% s1%", "smollm2-layer14", 262144, 2.4, 0.01, 0.01)]}
    merged = plots.merge_reports([first, second])
    assert merged["env"] == {"device": "first"}
    assert [r["seqlen"] for r in merged["rows"]] == [131072, 262144, 262144]
    series = plots.suite_series(merged)
    assert series["real (SmolLM2 heads, middle band), w8% s5%"] == [(131072, 2.5), (262144, 2.9)]
    assert series["real, middle band, w1% s1% (256K-1M)"] == [(262144, 2.4)]
    with pytest.raises(ValueError, match="at least one"):
        plots.merge_reports([])


def test_a_results_jsonl_stands_for_a_suite_json(tmp_path):
    """The rows a suite appends to results.jsonl as it goes can be merged after a suite.json."""
    first = {"env": {"device": "first"}, "sizes": {"long": 131072, "geometry": "llama3"}, "rows": [
        _case("1m", "1m real-mid a0.95 w1% s1%", "smollm2-layer14", 1048576, 11.0, 0.01, 0.01)]}
    rows = [{"part": "dense", "label": "dense baselines 131072", "seqlen": 131072, "cudnn": 9.0},
            _case("main128k", "128k real-mid a0.95 w8% s5%", "smollm2-layer14", 131072, 3.1)]
    (tmp_path / "suite.json").write_text(json.dumps(first))
    # the last line cut short, as by a run killed while writing it
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"part": "mai')
    merged = plots.merge_reports([plots.load_report(tmp_path / "suite.json"),
                                  plots.load_report(tmp_path / "results.jsonl")])
    assert merged["env"] == {"device": "first"}
    assert [r["part"] for r in merged["rows"]] == ["1m", "dense", "main128k"]
    assert plots.suite_series(merged)["real (SmolLM2 heads, middle band), w8% s5%"] == [(131072, 3.1)]
    # a cut line anywhere but last is an error that names the line
    (tmp_path / "bad.jsonl").write_text('{"part": "mai\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        plots.load_report(tmp_path / "bad.jsonl")
