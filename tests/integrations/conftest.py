"""Fixtures of the integration and evaluation tests: essay windows.

The real SmolLM2 model (``smollm2``) and the essays (``essays``) come from tests/conftest.py,
loaded once per session for every folder; nothing is mocked.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def window_1k(smollm2, essays):
    """(1, 1024) int64 token ids: one window of the essays."""
    from sampleattn.models.text import calibration_windows

    _, tokenizer = smollm2
    return calibration_windows(tokenizer, essays, 1024, 1, 0)[0].view(1, -1)
