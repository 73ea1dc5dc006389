"""Checks that need file permissions to apply, although the tests run as root.

Root ignores a folder's or a file's mode, so where the tests run as root a check runs as the
unprivileged user 65534 (``nobody``): `run_unprivileged` runs it in a forked child that drops
to that user. (A forked child, not a new process: the child has every module imported already,
whereas a new interpreter may not even be executable by ``nobody``, e.g. one under /root.) As
another user the checks run as that user, for whom the modes apply as they are. The locations
must be reachable by ``nobody``: `public_dir` makes one under ``/tmp`` (pytest's ``tmp_path``
lies in a folder only its owner may enter).
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534
AS_ROOT = os.geteuid() == 0


def run_unprivileged(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a forked child, as ``nobody`` when we are root; its result.

    An exception raised in the child is raised again here (pickled across). Where the child
    cannot drop its privileges, the test is skipped, except under CI (CI=true), where it fails.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            try:
                if AS_ROOT:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
            except OSError as exc:
                outcome: tuple[str, Any] = ("cannot-drop", str(exc))
            else:
                try:
                    outcome = ("ok", function(*args))
                except BaseException as exc:  # noqa: BLE001 - sent to the parent as it is
                    outcome = ("raised", exc)
            try:
                payload = pickle.dumps(outcome)
            except Exception as exc:  # an unpicklable result or exception
                payload = pickle.dumps(("raised", RuntimeError(f"{outcome[0]}: {outcome[1]!r} ({exc})")))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(payload)
    if kind == "cannot-drop":
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot run as uid {NOBODY} to test file permissions: {value}")
        pytest.skip(f"cannot run as uid {NOBODY} to test file permissions (as root they do not apply): {value}")
    if kind == "raised":
        raise value
    return value


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A fresh folder under /tmp that ``nobody`` may enter (not write); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sattn-store-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for root, dirs, _files in os.walk(path):
            for name in dirs:
                Path(root, name).chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRWXU)
        shutil.rmtree(path, ignore_errors=True)


def read_only(path: Path) -> Path:
    """Take the write bits off ``path`` (a file or a folder); returns it."""
    path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return path


def writable_by_all(path: Path) -> Path:
    """Let anyone write in the folder ``path`` (so that only the file's own mode counts)."""
    path.chmod(0o777)
    return path
