"""A small run of the accuracy evaluation on the real SmolLM2 (CPU): table, JSON and plots."""

from __future__ import annotations

import json

import pytest


def test_small_eval_writes_the_table(smollm2, tmp_path):
    from sampleattn.eval import EvalSettings, run_eval, write_outputs

    settings = EvalSettings(lengths=[256], samples=1, needle_lengths=[256], depths=[0.5], alphas=[0.95],
                            baselines=["window", "streamingllm", "bigbird", "vertical_slash"],
                            oracle_alphas=[0.95], estimator=False, backend="torch", max_new_tokens=8)
    model, tokenizer = smollm2
    result = run_eval(settings, model=model, tokenizer=tokenizer, log=lambda m: None)
    methods = {r["method"] for r in result.fidelity}
    assert methods == {"full", "sample_attention a=0.95", "window ~a=0.95", "streamingllm ~a=0.95",
                       "bigbird ~a=0.95", "vertical_slash ~a=0.95", "oracle a=0.95"}
    rows = {r["method"]: r for r in result.fidelity}
    assert rows["full"]["kl_sum"] == pytest.approx(0.0, abs=1e-6)
    sa = rows["sample_attention a=0.95"]
    assert 0.0 < sa["density"] < 1.0 and sa["kl_sum"] > 0
    for name in ("window", "streamingllm", "bigbird", "vertical_slash"):
        matched = rows[f"{name} ~a=0.95"]
        # per layer, each baseline's density is SampleAttention's on the same input
        for layer, density in sa["density_per_layer"].items():
            assert matched["density_per_layer"][layer] == pytest.approx(density, abs=0.03), (name, layer)
    assert {r["method"] for r in result.needle} == methods
    assert next(r for r in result.needle if r["method"] == "full")["correct"]
    summary = write_outputs(result.to_dict(), tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| sample_attention a=0.95 |" in table and "Needle in a haystack" in table
    assert (tmp_path / "accuracy_vs_density.png").stat().st_size > 0
    assert (tmp_path / "needle_heatmap.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["fidelity"]
    assert len(summary["fidelity"]) == len(methods)
    assert model.config._attn_implementation == "sdpa"

    # the CLI merges runs (e.g. fidelity and needle run as separate GPU commands) into one report
    from sampleattn.eval.__main__ import main

    assert main(["report", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert {r["method"] for r in merged["fidelity"]} == methods
