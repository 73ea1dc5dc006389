"""The GPU tests (``pytest -m gpu tests/gpu`` on a CUDA machine; skipped elsewhere).

Each test module marks its tests ``gpu`` and skips them without CUDA. Rows worth keeping (errors,
densities, first timings) go through the ``gpu_results`` fixture; with ``--gpu-out DIR`` they
are written at the end of the session as ``DIR/<name>.json`` with the environment, for the
benchmark pages. ``--gpu-lengths`` and ``--gpu-timing-lengths`` choose the lengths of the
whole-operator checks and of the first timings (tests/conftest.py declares the options).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

def _lengths(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    options = metafunc.config.option
    if "operator_length" in metafunc.fixturenames:
        metafunc.parametrize("operator_length", _lengths(options.gpu_lengths))
    if "timing_length" in metafunc.fixturenames:
        metafunc.parametrize("timing_length", _lengths(options.gpu_timing_lengths))


@pytest.fixture(scope="session")
def gpu_results(request):
    """``record(name, row)``: keeps ``row`` for ``<name>.json`` (written with ``--gpu-out``)."""
    reports: dict[str, list[dict]] = {}
    started = time.time()
    yield lambda name, row: reports.setdefault(name, []).append(row)
    out = request.config.getoption("--gpu-out")
    if not out or not reports:
        return
    from sampleattn import collect_env

    Path(out).mkdir(parents=True, exist_ok=True)
    for name, rows in reports.items():
        report = {"env": collect_env(), "seconds": time.time() - started, "results": rows}
        (Path(out) / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
