"""bench.plots.plot_suite draws the two PNGs from a suite.json-shaped report (dense rows skipped)."""

from __future__ import annotations

import json

from sampleattn.bench import plots


def _case(part, label, inputs, seqlen, speedup, window=0.08, sample=0.05, **extra):
    return {"part": part, "label": label, "inputs": inputs, "geometry": "llama3", "seqlen": seqlen, "alpha": 0.95,
            "window_ratio": window, "sample_ratio": sample, "plan_ms": 1.0, "attention_ms": 2.0, "total_ms": 3.0,
            "cudnn_ms": 3.0 * speedup, "speedup_vs_cudnn": speedup, **extra}


def test_plot_suite_writes_both_pngs(tmp_path):
    report = {"env": {"device": "test"}, "sizes": {"long": 131072, "geometry": "llama3"}, "rows": [
        {"part": "dense", "label": "dense baselines 131072", "seqlen": 131072, "cudnn": 9.0},
        _case("breakeven", "32768 real-mid a0.95 w8% s5%", "smollm2-layer14", 32768, 1.5),
        _case("breakeven", "32768 synthetic a0.95 w8% s5%", "synthetic", 32768, 1.1),
        _case("main128k", "128k real-mid a0.95 w8% s5%", "smollm2-layer14", 131072, 2.5),
        _case("synth128k", "128k synthetic a0.95 w8% s5%", "synthetic", 131072, 1.4),
        _case("1m", "1m real-mid a0.95 w1% s1%", "smollm2-layer14", 1048576, 8.0, 0.01, 0.01,
              speedup_vs_cudnn_measured=8.5),
    ]}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(report))
    assert plots.main([str(path), "--out", str(tmp_path / "png"), "--prefix", "x-"]) == 0
    for name in ("x-speedup.png", "x-stages.png"):
        assert (tmp_path / "png" / name).read_bytes()[:4] == b"\x89PNG"


def test_plots_merge_the_rows_of_several_runs(tmp_path):
    first = {"env": {"device": "first"}, "sizes": {"long": 131072, "geometry": "llama3"}, "rows": [
        _case("main128k", "128k real-mid a0.95 w8% s5%", "smollm2-layer14", 131072, 2.5)]}
    second = {"env": {"device": "second"}, "sizes": {"long": 131072, "geometry": "llama3"}, "rows": [
        _case("mid512k", "262144 real-mid a0.95 w8% s5%", "smollm2-layer14", 262144, 2.9),
        _case("mid512k", "262144 real-mid a0.95 w1% s1%", "smollm2-layer14", 262144, 2.4, 0.01, 0.01)]}
    merged = plots.merge_reports([first, second])
    assert merged["env"] == {"device": "first"}
    assert [r["seqlen"] for r in merged["rows"]] == [131072, 262144, 262144]
    paths = []
    for i, report in enumerate((first, second)):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(report))
    assert plots.main([str(p) for p in paths] + ["--out", str(tmp_path / "png"), "--prefix", "m-"]) == 0
    assert (tmp_path / "png" / "m-speedup.png").read_bytes()[:4] == b"\x89PNG"


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
    assert plots.main([str(tmp_path / "suite.json"), str(tmp_path / "results.jsonl"),
                       "--out", str(tmp_path / "png")]) == 0
