"""Every ``sattn-store`` command through a subprocess, in table and JSON output, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from store_helpers import FIXTURE_V1, add_model, add_run, populate

from sampleattn.store import ProfileStore
from sampleattn.store.migrate import HEAD_REVISION, VERSION_TABLE

SCRIPT = Path(sys.executable).with_name("sattn-store")


def sattn(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (or the module where the script is missing)."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sampleattn.store.cli"]
    env = {**os.environ, "SAMPLEATTN_STORE": "/nonexistent/sattn-store-tests.sqlite"}
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
                          input=stdin)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A populated SQLite store shared by the commands that only read."""
    path = tmp_path_factory.mktemp("cli") / "store.sqlite"
    with ProfileStore(path) as store:
        populate(store)
        add_model(store, name="synthetic-only")
        run = add_run(store, model="synthetic-only", lengths=("4k",), kind="synthetic")
        store.save_profile("synthetic-only", "4k", {}, run=run)
    return path


@pytest.fixture
def db_copy(db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.sqlite"
    shutil.copyfile(db, path)
    return path


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_list(db):
    table = ok(sattn("--store", str(db), "list"))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "LENGTH", "CALIB"]
    assert lines[0].split()[3:7] == ["MODE", "ALPHA", "WINDOW", "SAMPLE"]
    # 8k is below the config's dense_below (32768): dense, the sparse parameters do nothing
    assert lines[2].split()[:8] == ["llama-toy", "8k", "real", "dense", "-", "-", "-", "-"]
    assert lines[4].split()[:8] == ["llama-toy", "32k", "real", "sampled", "0.96", "0.04", "0.02", "2L/1H"]
    data = json.loads(ok(sattn("list", "--store", str(db), "--format", "json")))  # options after the command
    assert [(p["model"], p["seq_len"], p["calibration_kind"]) for p in data] == [
        ("llama-toy", 8192, "real"), ("llama-toy", 8192, "synthetic"), ("llama-toy", 32768, "real"),
        ("synthetic-only", 4096, "synthetic"),
    ]
    filtered = json.loads(ok(sattn("--format", "json", "list", "--store", str(db), "--calibration", "real")))
    assert len(filtered) == 2


def test_show_model(db):
    table = ok(sattn("--store", str(db), "show", "llama-toy"))
    assert "4 layers, 8 query heads, 2 KV heads, head dim 64" in table
    assert "llama-toy/8k,32k/real" in table and "complete" in table
    data = json.loads(ok(sattn("--store", str(db), "--format", "json", "show", "llama-toy")))
    assert data["model"]["num_layers"] == 4
    assert len(data["profiles"]) == 3 and len(data["runs"]) == 2


def test_show_length(db):
    result = sattn("--store", str(db), "show", "llama-toy", "--length", "40000")
    table = ok(result)
    assert "profile length    32k (below, 1.2x)" in table
    assert "layer" not in result.stderr
    assert "LAYER  HEAD" in table and "0      3" in table
    data = json.loads(ok(sattn("--store", str(db), "--format", "json", "show", "llama-toy", "--length", "1m")))
    assert data["bucket"] == {"length": 32768, "exact": False, "ratio": 32.0, "far": True}
    assert data["profile"]["config"]["layers"]["0"]["heads"]["3"]["window_ratio"] == 0.1
    far = sattn("--store", str(db), "show", "llama-toy", "--length", "1m")
    assert far.returncode == 0 and "warning" in far.stderr and "32.0x away" in far.stderr


def test_show_synthetic_only(db):
    refused = sattn("--store", str(db), "show", "synthetic-only", "--length", "4k")
    assert refused.returncode == 1 and "--allow-synthetic" in refused.stderr
    allowed = ok(sattn("--store", str(db), "show", "synthetic-only", "--length", "4k", "--allow-synthetic"))
    assert "calibration       synthetic" in allowed


def test_pareto(db, tmp_path):
    table = ok(sattn("--store", str(db), "pareto", "llama-toy", "--length", "32k"))
    rows = table.split("\n\n")[0].splitlines()[2:]
    assert rows and all(row.split()[0] == "llama-toy/8k,32k/real" for row in rows)  # none is the profile
    assert "no trial on this front is the stored profile at this length" in table
    data = json.loads(ok(sattn("--store", str(db), "--format", "json", "pareto", "llama-toy", "--length", "32768")))
    with ProfileStore(db, readonly=True) as store:
        expected = [(t.run, t.number) for t in store.pareto("llama-toy", "32k")]
    assert [(t["run"], t["number"]) for t in data["front"]] == expected
    plot = tmp_path / "front.png"
    result = sattn("--store", str(db), "pareto", "llama-toy", "--length", "8k", "--plot", str(plot))
    assert f"plot written to {plot}" in ok(result)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = sattn("--store", str(db), "pareto", "llama-toy", "--length", "1m")
    assert missing.returncode == 1 and "lengths with trials: 8k, 32k" in missing.stderr


def test_runs(db):
    table = ok(sattn("--store", str(db), "runs"))
    assert table.splitlines()[0].split()[:3] == ["RUN", "MODEL", "LENGTHS"]
    assert "interrupted" in table
    data = json.loads(ok(sattn("--store", str(db), "--format", "json", "runs", "--model", "llama-toy")))
    assert [(r["name"], r["trials"]) for r in data] == [("llama-toy/8k,32k/real", 10), ("llama-toy/8k/synthetic", 1)]


def test_export_and_import(db, tmp_path):
    exported = json.loads(ok(sattn("--store", str(db), "export")))
    assert exported["format"] == "sampleattn-profile-store" and len(exported["profiles"]) == 4
    path = tmp_path / "export.json"
    assert "exported 2 models, 3 runs, 11 trials, 4 profiles to" in ok(sattn("--store", str(db), "export", "-o", str(path)))
    summary = json.loads(ok(sattn("--store", str(db), "--format", "json", "export", "-o", str(path), "--model", "llama-toy")))
    assert summary == {"output": str(path), "models": 1, "runs": 2, "trials": 11, "profiles": 3}
    target = tmp_path / "new" / "target.sqlite"
    assert f"imported 1 models, 2 runs, 11 trials, 3 profiles into sqlite:///{target}" in ok(
        sattn("--store", str(target), "import", str(path)))
    again = json.loads(ok(sattn("--store", str(target), "--format", "json", "import", "-", stdin=path.read_text())))
    assert again["profiles"] == 3
    listed = lambda store: json.loads(ok(sattn("--store", str(store), "--format", "json", "list", "--model", "llama-toy")))  # noqa: E731
    assert listed(target) == listed(db)


def test_import_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "sampleattn-profile-store", "format_version": 7}')
    target = tmp_path / "target.sqlite"
    result = sattn("--store", str(target), "import", str(bad))
    assert result.returncode == 1 and "format version 7" in result.stderr
    assert not target.exists()  # nothing is created for an export that does not validate
    result = sattn("--store", str(target), "import", str(tmp_path / "missing.json"))
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_delete(db_copy):
    assert "deleted 1 profile of llama-toy" in ok(
        sattn("--store", str(db_copy), "delete", "llama-toy", "--length", "8k", "--calibration", "synthetic"))
    data = json.loads(ok(sattn("--store", str(db_copy), "--format", "json", "delete", "llama-toy")))
    assert data == {"model": "llama-toy", "deleted": 2}
    again = sattn("--store", str(db_copy), "delete", "llama-toy")
    assert again.returncode == 1 and "no matching profile" in again.stderr


def test_upgrade(tmp_path):
    path = tmp_path / "old.sqlite"
    shutil.copyfile(FIXTURE_V1, path)
    refused = sattn("--store", str(path), "list")
    assert refused.returncode == 3 and "sattn-store upgrade" in refused.stderr
    assert f"upgraded schema 0001 -> {HEAD_REVISION}" in ok(sattn("--store", str(path), "upgrade"))
    data = json.loads(ok(sattn("--store", str(path), "--format", "json", "upgrade")))
    assert data == {"store": f"sqlite:///{path}", "from": HEAD_REVISION, "to": HEAD_REVISION, "migrated": False}
    assert "smollm2-135m" in ok(sattn("--store", str(path), "list"))
    missing = sattn("--store", str(tmp_path / "none.sqlite"), "upgrade")
    assert missing.returncode == 1 and "no profile store" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()


def test_env():
    from sampleattn.env import collect_env

    table = ok(sattn("env"))
    assert table.splitlines()[0].split()[0] == "python"
    data = json.loads(ok(sattn("--format", "json", "env")))
    assert data == collect_env()


@pytest.mark.parametrize(
    "args, message",
    [
        (["list", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["show", "llama-toy", "--length", "32q"], "cannot read '32q' as a length"),
        (["show", "llama-toy", "--length", "-5"], "argument --length"),
        (["pareto", "llama-toy"], "the following arguments are required: --length"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(db, args, message):
    result = sattn("--store", str(db), *args)
    assert result.returncode == 2
    assert message in result.stderr and "usage: sattn-store" in result.stderr


def test_operational_errors_exit_1(db, tmp_path):
    missing = sattn("--store", str(tmp_path / "absent.sqlite"), "list")
    assert missing.returncode == 1 and "no profile store at" in missing.stderr
    unknown = sattn("--store", str(db), "show", "nope")
    assert unknown.returncode == 1 and "no model 'nope'" in unknown.stderr
    default = sattn("list")  # SAMPLEATTN_STORE points to a missing file
    assert default.returncode == 1 and "/nonexistent/sattn-store-tests.sqlite" in default.stderr


def test_schema_and_corruption_errors_exit_3(db_copy, tmp_path):
    engine = create_engine(f"sqlite:///{db_copy}")
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0042'"))
    engine.dispose()
    newer = sattn("--store", str(db_copy), "list")
    assert newer.returncode == 3 and "0042" in newer.stderr and "Upgrade sampleattn" in newer.stderr
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"PK\x03\x04 not a database at all" * 100)
    before = corrupt.read_bytes()
    for command in (["list"], ["upgrade"], ["import", str(corrupt)]):
        result = sattn("--store", str(corrupt), *command)
        assert result.returncode in (1, 3) and corrupt.read_bytes() == before
    result = sattn("--store", str(corrupt), "upgrade")
    assert result.returncode == 3 and "is not a SQLite database" in result.stderr
