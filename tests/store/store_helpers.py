"""Helpers that fill a store for the tests (imported by the test modules as ``store_helpers``)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE_V1 = HERE / "fixtures" / "store_v1.sqlite"

ENV = {"python": "3.11", "device": "NVIDIA H200", "device_count": 1, "cuda": "12.8", "torch": "2.9.0",
       "triton": "3.5.0", "sampleattn": "0.1.0"}


def add_model(store, name: str = "llama-toy", **overrides):
    """Register a small model: 4 layers, 8 query heads, 2 KV heads, head dim 64."""
    fields = dict(name=name, hf_id=f"org/{name}", family="llama", num_layers=4, num_q_heads=8, num_kv_heads=2,
                  head_dim=64, trained_context=32768)
    fields.update(overrides)
    return store.register_model(**fields)


def add_run(store, model: str = "llama-toy", name: str | None = None, lengths=("8k", "32k"),
            kind: str = "real", **overrides):
    """Start a run of ``model`` at ``lengths`` (calibration ``kind``), with fixed metadata."""
    fields = dict(
        name=name or f"{model}/{','.join(lengths)}/{kind}",
        lengths=list(lengths),
        objective="layer",
        max_error=0.05,
        min_retained_mass=0.9,
        calibration={"kind": kind, "source": "essays" if kind == "real" else "synthetic",
                     "fingerprint": "sha256:abc", "samples": 4},
        search_space={"alpha": {"kind": "float", "low": 0.8, "high": 0.995},
                      "window_ratio": {"kind": "float", "low": 0.005, "high": 0.15, "log": True},
                      "gqa_granularity": {"kind": "categorical", "choices": ["query_head", "kv_head"]}},
        sampler="TPESampler",
        seed=1234,
        env=ENV,
        host="node-1",
        attrs={"rope_scaling": None, "per_layer": False},
    )
    fields.update(overrides)
    return store.start_run(model, **fields)


def trial_metrics(error: float, latency: float, **extra):
    """Metrics of a complete trial."""
    metrics = dict(rel_error=error, retained_mass_mean=0.96, retained_mass_min=0.91, density=0.25,
                   latency_ms=latency, dense_latency_ms=4.0, latency_measured=True)
    metrics.update(extra)
    return metrics


def populate(store) -> dict:
    """A model with a real run (trials at 8k and 32k, profiles at both) and a synthetic run."""
    add_model(store)
    real = add_run(store)
    for number in range(8):
        seq_len = "8k" if number < 4 else "32k"
        store.record_trial(real, number, seq_len=seq_len, state="complete",
                           params={"alpha": 0.9 + 0.01 * number, "window_ratio": 0.05},
                           config={"config": {"alpha": 0.9 + 0.01 * number, "window_ratio": 0.05}},
                           metrics=trial_metrics(0.05 - 0.005 * number, 1.0 + 0.25 * (number % 4)),
                           worker=f"actor-{number % 2}", device="NVIDIA H200", duration_s=3.5)
    store.record_trial(real, 8, seq_len="8k", state="failed", params={"alpha": 0.8},
                       error_message="CUDA error: out of memory", worker="actor-0")
    store.record_trial(real, 9, seq_len="32k", state="pruned", params={"alpha": 0.81})
    store.save_profile("llama-toy", "8k", {"config": {"alpha": 0.93, "window_ratio": 0.05}}, run=real,
                       metrics=trial_metrics(0.035, 1.75, speedup=2.29))
    store.save_profile(
        "llama-toy", "32k",
        {"config": {"alpha": 0.96, "window_ratio": 0.04, "sample_ratio": 0.02},
         "layers": {0: {"alpha": 0.99, "heads": {3: {"window_ratio": 0.1}}}, 2: {"sample_ratio": 0.05}}},
        run=real, metrics=trial_metrics(0.02, 1.25, extra={"kl_divergence": 0.004}),
    )
    store.finish_run(real)
    synthetic = add_run(store, lengths=("8k",), kind="synthetic")
    store.record_trial(synthetic, 0, seq_len="8k", state="complete", metrics=trial_metrics(0.01, 0.5))
    store.save_profile("llama-toy", "8k", {"config": {"alpha": 0.9}}, run=synthetic,
                       metrics=trial_metrics(0.01, 0.5))
    store.finish_run(synthetic, "interrupted")
    return {"real": real, "synthetic": synthetic}
