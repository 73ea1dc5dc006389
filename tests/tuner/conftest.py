"""Fixtures of the tuner's tests: a Ray cluster.

The real SmolLM2 model (``smollm2``), the essays (``essays``) and an offline Hugging Face cache
(``empty_hf_cache``) come from tests/conftest.py; nothing is mocked.
"""

from __future__ import annotations

import pytest


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
