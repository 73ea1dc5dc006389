"""A small run of the accuracy evaluation on the real SmolLM2 (CPU): table, JSON and plots."""

from __future__ import annotations

import json

import pytest


def make_store(path, profiles):
    """A profile store holding smollm2-135m's ``profiles`` ({length: profile dict})."""
    from sampleattn.store import ProfileStore
    from sampleattn.models.catalog import get_model_spec

    spec = get_model_spec("smollm2-135m")
    with ProfileStore(path) as store:
        store.register_model(name=spec.name, hf_id=spec.hf_id, family=spec.family, num_layers=spec.num_layers,
                             num_q_heads=spec.num_q_heads, num_kv_heads=spec.num_kv_heads,
                             head_dim=spec.head_dim, trained_context=spec.trained_context)
        for length, profile in profiles.items():
            store.save_profile(spec.name, length, profile, calibration_kind="real")
    return str(path)


def test_small_eval_writes_the_table(smollm2, tmp_path, capsys):
    from sampleattn.eval import EvalSettings, run_eval, write_outputs

    store = make_store(tmp_path / "store.sqlite",
                       {256: {"config": {"alpha": 0.98, "window_ratio": 0.1, "dense_below": 0}}})
    settings = EvalSettings(lengths=[256], samples=1, needle_lengths=[256], depths=[0.5], alphas=[0.95],
                            baselines=["window", "streamingllm", "bigbird", "vertical_slash"],
                            oracle_alphas=[0.95], rescored_alphas=[0.95], estimator=False, profile=store,
                            backend="torch", max_new_tokens=8)
    model, tokenizer = smollm2
    result = run_eval(settings, model=model, tokenizer=tokenizer, log=print, progress=True)
    captured = capsys.readouterr()
    runs = len(result.fidelity) + len(result.needle)
    assert "evaluation: 100%" in captured.err and f"{runs}/{runs}" in captured.err  # the bar, on stderr
    assert "fidelity L=256" in captured.out  # the log lines go above the bar, on stdout
    methods = {r["method"] for r in result.fidelity}
    assert methods == {"full", "sample_attention a=0.95", "sample_attention_rescored a=0.95", "tuned",
                       "window ~a=0.95", "streamingllm ~a=0.95", "bigbird ~a=0.95", "vertical_slash ~a=0.95",
                       "oracle a=0.95"}
    assert result.meta["not_run"] == []
    # most important first: full and the primary alpha, then the other SampleAttention rows, the
    # matched baselines, the oracle
    order = [r["method"] for r in result.fidelity]
    assert order[:2] == ["full", "sample_attention a=0.95"] and order[-1] == "oracle a=0.95"
    rows = {r["method"]: r for r in result.fidelity}
    # the re-scored rows have their own density; the tuned row runs the store's profile (alpha 0.98,
    # window 10%: denser and closer to full attention than the paper's setting at 0.95)
    assert 0.0 < rows["sample_attention_rescored a=0.95"]["density"] < 1.0
    tuned = rows["tuned"]
    assert tuned["density"] > rows["sample_attention a=0.95"]["density"]
    assert tuned["kl_sum"] < rows["sample_attention a=0.95"]["kl_sum"]
    assert result.meta["tuned_profiles"][256]["profile_length"] == 256
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


def test_run_order_and_tiers():
    from sampleattn.eval.runner import EvalSettings, method_specs

    settings = EvalSettings(alphas=[0.8, 0.9, 0.95], rescored_alphas=[0.9, 0.95], oracle_alphas=[0.95],
                            baselines=["window", "vertical_slash"], estimator=True)
    names = [s.name for s in method_specs(settings)]
    assert names == [
        "full", "sample_attention a=0.95",
        "sample_attention a=0.9", "sample_attention a=0.8",
        "sample_attention_rescored a=0.95", "sample_attention_rescored a=0.9",
        "window ~a=0.95", "vertical_slash ~a=0.95",
        "oracle a=0.95",
        "window ~a=0.9", "vertical_slash ~a=0.9", "window ~a=0.8", "vertical_slash ~a=0.8",
        "pooled a=0.8", "pooled a=0.9", "pooled a=0.95", "rescored_proto a=0.9", "rescored_proto a=0.95"]
    odd = method_specs(EvalSettings(alphas=[0.95], rescored_alphas=[0.95], candidate_alpha=0.99, rescore_stride=4))
    assert "sample_attention_rescored a=0.95 c=0.99 stride=4" in [s.name for s in odd]


def test_budget():
    from sampleattn.eval.runner import Budget

    now = [100.0]
    budget = Budget(60, start=90.0, clock=lambda: now[0])
    assert budget.elapsed() == 10 and budget.fits(50) and not budget.fits(50.5)
    now[0] = 200.0
    assert not budget.fits(0)
    assert Budget(None, clock=lambda: now[0]).fits(1e9)


def test_tuned_profile_per_length_dense_and_missing(tmp_path):
    """The tuned row takes the store's profile of each length; a profile that runs dense at that
    length, or no profile at all, is not run, with the reason."""
    from sampleattn.eval.runner import EvalSettings, SkipMethod, TunedProfiles

    store = make_store(tmp_path / "s.sqlite", {
        512: {"config": {"alpha": 0.97, "dense_below": 0}},
        2048: {"config": {"alpha": 0.97, "dense_below": 4096}}})
    tuned = TunedProfiles(EvalSettings(profile=store, backend="torch"))
    assert tuned.operator(1024).config_for(0).alpha == 0.97  # bucket rule: the 512 profile
    assert tuned.info[1024]["profile_length"] == 512
    with pytest.raises(SkipMethod, match="dense"):
        tuned.operator(2048)
    missing = TunedProfiles(EvalSettings(profile=make_store(tmp_path / "empty.sqlite", {}), backend="torch"))
    with pytest.raises(SkipMethod, match="no tuned profile"):
        missing.operator(512)


def test_budget_stops_starting_work(smollm2):
    """Past the budget no method starts; what ran is the most important, the rest is listed."""
    from sampleattn.eval.runner import EvalSettings, run_eval

    now = [0.0]

    def tick(_result):  # every row "takes" 10 s of the fake clock
        now[0] += 10.0

    settings = EvalSettings(lengths=[128], samples=1, tasks=["fidelity"], alphas=[0.9, 0.95], rescored_alphas=[],
                            baselines=["window"], oracle_alphas=[0.95], backend="torch", budget_s=25)
    model, tokenizer = smollm2
    result = run_eval(settings, model=model, tokenizer=tokenizer, log=lambda m: None, on_row=tick,
                      start=0.0, clock=lambda: now[0])
    assert [r["method"] for r in result.fidelity] == ["full", "sample_attention a=0.95", "sample_attention a=0.9"]
    assert {(r["method"], r["reason"]) for r in result.meta["not_run"]} == {
        ("window ~a=0.95", "time budget"), ("oracle a=0.95", "time budget"), ("window ~a=0.9", "time budget")}
    assert result.meta["budget"]["not_run_for_time"] == 3


def test_scaled_model_is_derived_from_the_loaded_weights(smollm2, essays):
    """Beyond the trained context the evaluation derives the YaRN model from the loaded one
    (no second GGUF read): the same logits as loading it with max_length."""
    import torch

    from sampleattn.eval.runner import EvalSettings, ModelCache
    from sampleattn.models.loading import load_model
    from sampleattn.models.text import calibration_windows

    model, tokenizer = smollm2
    cache = ModelCache(EvalSettings(), lambda m: None, (model, tokenizer))
    derived = cache.get(16384)[0]
    assert cache.get(1024)[0] is model and cache.get(16384)[0] is derived
    loaded, _ = load_model("smollm2-135m", max_length=16384)
    ids = calibration_windows(tokenizer, essays, 200, 1, 0)[0].view(1, -1)
    with torch.no_grad():
        a, b, c = derived(ids).logits, loaded(ids).logits, model(ids).logits
    assert derived.config.rope_parameters == loaded.config.rope_parameters
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a - c).abs().max() > 1e-2  # the scaling changes the model
