"""The environment a measurement ran in: GPU, CUDA, library versions.

`collect_env()` is what the store records on every run and trial, and what
``sattn-store env`` prints. It imports optional packages only to read their versions.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

__all__ = ["collect_env"]

_PACKAGES = ("sampleattn", "torch", "triton", "transformers", "optuna", "ray", "sqlalchemy", "pydantic")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_env() -> dict[str, str | int | None]:
    """Return a flat, JSON-serialisable description of this machine and its software.

    Keys: ``python``, ``platform``, ``device`` (GPU name or ``"cpu"``), ``device_count``,
    ``cuda`` (CUDA runtime version or None), ``compute_capability``, and one ``<package>``
    key per package in `_PACKAGES` (its version, or None where it is not installed).
    """
    env: dict[str, str | int | None] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": "cpu",
        "device_count": 0,
        "cuda": None,
        "compute_capability": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name(0)
            env["device_count"] = torch.cuda.device_count()
            env["cuda"] = torch.version.cuda
            major, minor = torch.cuda.get_device_capability(0)
            env["compute_capability"] = f"{major}.{minor}"
    except ImportError:
        pass
    for package in _PACKAGES:
        env[package] = _version(package)
    return env
