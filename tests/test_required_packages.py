"""The real-model fixtures skip locally but fail under CI when their packages are missing."""

from __future__ import annotations

import pytest

from required_packages import require_package

MISSING = "sampleattn_no_such_package"


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_package_fails_under_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=f"the {MISSING} package is not installed: pip install x"):
        require_package(MISSING, "pip install x")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_a_missing_package_skips_elsewhere(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="pip install x"):
        require_package(MISSING, "pip install x")


def test_an_installed_package_runs(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require_package("torch", "pip install torch")  # returns: nothing to skip or fail
