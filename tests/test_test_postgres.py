"""`make test`'s throwaway PostgreSQL (scripts/test-with-postgres.sh): whatever it starts it stops,
also when the command fails or on Ctrl-C, and says so; a server already running is left alone.

Real servers on a spare port with their own data directory, so a server of the running suite
(port 55432) is never touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "scripts" / "test-with-postgres.sh"
START = ROOT / "scripts" / "start-postgres.sh"

if not (glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")):
    pytest.skip("PostgreSQL is not installed (scripts/start-postgres.sh installs it)", allow_module_level=True)


@pytest.fixture
def pg(tmp_path):
    """``(env, data_dir, port)`` for a server of this test; stopped afterwards in any case."""
    port = str(55480 + os.getpid() % 400)
    data = Path(f"/tmp/sattn-pg-selftest-{os.getpid()}")  # not under tmp_path: the server's user must reach it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SATTN_", "SAMPLEATTN_TEST_PG"))}
    env.update(SATTN_PG_PORT=port, SATTN_PG_DIR=str(data))
    yield env, data, port
    subprocess.run(["bash", str(START), "--stop", port], env=env, capture_output=True)


def _running(data: Path) -> bool:
    return (data / "postmaster.pid").exists()


def test_stops_the_server_it_started_also_on_failure(pg) -> None:
    env, data, port = pg
    command = 'test -n "$SAMPLEATTN_TEST_PG_URL" && test -f "$SATTN_TEST_PG_DIR/postmaster.pid" && exit 3'
    done = subprocess.run(["bash", str(WRAPPER), "bash", "-c", command], env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr  # the command ran with the server up; its status is kept
    assert f"PostgreSQL: stopped the server started for these tests (127.0.0.1:{port}; removed {data})" in done.stdout
    assert not data.exists()


def test_leaves_a_server_that_was_already_running(pg) -> None:
    env, data, port = pg
    subprocess.run(["bash", str(START)], env=env, check=True, capture_output=True)
    done = subprocess.run(["bash", str(WRAPPER), "true"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "stopped" not in done.stdout
    assert _running(data)


def test_ctrl_c_stops_the_server(pg) -> None:
    env, data, port = pg
    # A shell started as a background job without job control ignores SIGINT, and so would the
    # wrapper it starts: give the wrapper the default disposition, as a terminal's foreground has.
    proc = subprocess.Popen(["bash", str(WRAPPER), "sleep", "60"], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not _running(data) or not _sleeping(proc.pid):
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground group
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "PostgreSQL: stopped the server started for these tests" in out
    assert not data.exists()


def _sleeping(pid: int) -> bool:
    """True once the wrapper runs its command (`sleep`), i.e. the server is up and exported."""
    return subprocess.run(["pgrep", "-P", str(pid), "-x", "sleep"], capture_output=True).returncode == 0


def test_pytest_stops_it_before_its_summary_line(pg, tmp_path) -> None:
    """Under `make test`, pytest itself stops the server, so its summary line stays the last."""
    env, data, port = pg
    (tmp_path / "test_one.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from session_progress import SessionProgress\n\n"
        "def pytest_configure(config):\n    config.pluginmanager.register(SessionProgress(config))\n")
    done = subprocess.run(["bash", str(WRAPPER), str(Path(os.sys.executable)), "-m", "pytest", "-p", "no:cacheprovider",
                           str(tmp_path)], env=env, capture_output=True, text=True, cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in lines[-1]
    assert any(line.startswith("PostgreSQL: stopped the server started for these tests") for line in lines[:-1])
    assert not data.exists()
