"""Fixtures of the tests of models and their calibration data: an empty calibration cache.

The real SmolLM2 model (``smollm2``), the essays (``essays``) and an offline Hugging Face cache
(``empty_hf_cache``) come from tests/conftest.py; nothing is mocked.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def cache(tmp_path):
    """An empty calibration cache in a temporary folder."""
    from sampleattn.models.calibration import CalibrationCache

    return CalibrationCache(tmp_path / "calibration")
