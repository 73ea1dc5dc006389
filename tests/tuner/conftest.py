"""Fixtures of the tuner's tests: caches, an offline Hugging Face cache, a Ray cluster.

The real SmolLM2 model (``smollm2``) and the essays (``essays``) come from tests/conftest.py,
loaded once per session for every folder; nothing is mocked.
"""

from __future__ import annotations

import pytest


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
