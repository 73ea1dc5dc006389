"""End-to-end search on real parts: the real SmolLM2, a real local Ray cluster, a real SQLite store.

Kept small for CI on 2 cores: lengths 512 and 1K, one calibration sample, three layers, a few
trials. The Ray cluster is the session's (``ray_cluster``), which `tune` joins.
"""

from __future__ import annotations

import pytest
import torch

from sampleattn.tuner.search import TuneOptions, run_name, study_name, tune

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"


def test_end_to_end_real_model(smollm2, essays, ray_cluster, tmp_path):
    model, tokenizer = smollm2
    store_path = tmp_path / "store.sqlite"
    options = TuneOptions(
        model=MODEL, lengths=[512, 1024], trials=4, samples=1, layers=[0, 1, 2], device="cpu",
        store=str(store_path), cache_dir=str(tmp_path / "cache"), progress=False, per_layer=True,
        max_error=0.3,  # loose enough at these short lengths that sparse trials are feasible
    )
    report = tune(options, model=model, tokenizer=tokenizer, out=None)

    from sampleattn.store import ProfileStore

    with ProfileStore(store_path, readonly=True) as store:
        run = store.get_run(report.run)
        assert run.status == "complete" and run.calibration.kind == "real"
        assert run.calibration.source == "essays" and run.sampler.startswith("TPESampler")
        info = store.get_model(MODEL)
        assert (info.num_layers, info.num_q_heads, info.num_kv_heads, info.head_dim) == (30, 9, 3, 64)
        for length in (512, 1024):
            stage1 = store.trials(report.run, seq_len=length, study=study_name(options, length, "cpu"))
            assert [t.number for t in stage1] == list(range(4))
            assert all(t.state == "complete" for t in stage1)
            first = stage1[0]  # the paper's setting, enqueued first
            assert first.params["alpha"] == 0.95 and first.config.config.dense_below == 0
            assert first.metrics.latency_measured is False and first.metrics.rel_error > 0
            assert "layer001_rel_error" in first.metrics.extra
            dense = stage1[1]  # the dense baseline, enqueued second
            assert dense.params["dense_below"] == 2 * length
            assert dense.metrics.rel_error == 0.0 and dense.metrics.density == 1.0
            assert store.pareto(MODEL, length, run=report.run)
            profile = store.get_profile(MODEL, length)
            assert profile.run == report.run and profile.metrics.rel_error <= report.max_error
    assert all(r.per_layer is not None and r.per_layer.candidates >= 2 for r in report.lengths)
    assert all(r.chosen.config.config.dense_below == 0 for r in report.lengths)

    # from_profile reads it back, checks the geometry, and runs on the real model's q/k/v.
    from sampleattn import Geometry, SampleAttention

    cfg = model.config
    geometry = Geometry(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                        cfg.hidden_size // cfg.num_attention_heads)
    attn = SampleAttention.from_profile(MODEL, 1024, store=str(store_path), geometry=geometry, backend="torch")
    assert attn.source.seq_len == 1024
    from sampleattn.models.calibration import CalibrationCache

    sample = CalibrationCache(tmp_path / "cache").get_or_capture(model, tokenizer, text=essays, length=1024, sample=0)
    layer = sample.layer(1, dtype=torch.float32)
    out = attn(layer["q"], layer["k"], layer["v"], layer=1)
    assert out.shape == layer["q"].shape and torch.isfinite(out).all()

    # ... and in the model's prefill, through the transformers integration.
    integration = pytest.importorskip("sampleattn.integrations.transformers")
    ids = sample.input_ids.view(1, -1)
    with torch.no_grad():
        with integration.patch_model(model, attn):
            logits = model(ids, use_cache=False).logits[0, -64:]
        ref = model(ids, use_cache=False).logits[0, -64:]
    assert torch.isfinite(logits).all()
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean() > 0.5


def test_failing_trial_and_dead_worker(ray_cluster, tmp_path, monkeypatch):
    """A trial that raises is recorded failed, a worker that dies is replaced; the run goes on."""
    monkeypatch.setenv("SATTN_TUNE_FAIL_TRIALS", "2")
    monkeypatch.setenv("SATTN_TUNE_CRASH_TRIALS", "3")
    options = TuneOptions(model=MODEL, lengths=[512], trials=6, samples=1, layers=[0, 1], device="cpu",
                          calibration="synthetic", store=str(tmp_path / "s.sqlite"), progress=False)
    report = tune(options, out=None)
    assert report.replaced_workers == 1

    from sampleattn.store import ProfileStore

    with ProfileStore(tmp_path / "s.sqlite", readonly=True) as store:
        trials = {t.number: t for t in store.trials(run_name(options, "cpu"))}
        assert sorted(trials) == list(range(6))
        assert trials[2].state == "failed" and "injected failure" in trials[2].error_message
        assert trials[3].state == "failed" and "died" in trials[3].error_message
        assert sum(t.state == "complete" for t in trials.values()) == 4
        assert store.get_run(report.run).status == "complete"
        profile = store.get_profile(MODEL, 512, allow_synthetic=True)
        assert profile.calibration_kind == "synthetic"
        with pytest.raises(LookupError):  # never picked for a real model unless asked
            store.get_profile(MODEL, 512)

    from sampleattn.tuner.report import format_summary, plot_pareto

    summary = format_summary(report)
    assert summary.splitlines()[2].startswith("512") and "1 worker(s) replaced" in summary
    png = plot_pareto(report, str(tmp_path / "pareto.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_model_objective_on_real_model(smollm2, essays, tmp_path):
    """``--objective model``: KL and top-1 of the logits of a patched prefill vs full attention."""
    pytest.importorskip("sampleattn.integrations.transformers")
    from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
    from sampleattn.models.calibration import CalibrationCache
    from sampleattn.tuner.evaluate import ModelEvaluator

    model, tokenizer = smollm2
    sample = CalibrationCache(tmp_path / "cache").get_or_capture(model, tokenizer, text=essays, length=512, sample=0)
    evaluator = ModelEvaluator(model, [sample], device="cpu")
    dense = evaluator.evaluate(ModelAttentionProfile(config=SampleAttentionConfig(dense_below=1024)))
    assert dense["kl_divergence"] < 1e-4 and dense["top1_agreement"] == 1.0
    sparse = evaluator.evaluate(ModelAttentionProfile(config=SampleAttentionConfig(
        alpha=0.8, window_ratio=0.01, sample_ratio=0.02, dense_below=0)))
    assert sparse["kl_divergence"] > dense["kl_divergence"] and 0.0 <= sparse["top1_agreement"] <= 1.0
