"""Stores in hard places: read-only locations, damaged files, no permission, a full disk, drivers.

Real SQLite files in real folders whose modes apply (as root, the checks run as uid 65534: see
``unprivileged.py``), a real full file system (a 2 MiB tmpfs, where this machine may mount
one) and SQLite's own SQLITE_FULL (``PRAGMA max_page_count``), and the real PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from store_helpers import add_model, populate
from unprivileged import AS_ROOT, read_only, run_unprivileged, writable_by_all

from sampleattn.store import CorruptStoreError, ProfileStore, StoreError, cli
from sampleattn.store.errors import StoreDiskFullError, StorePermissionError

SCRIPT = Path(sys.executable).with_name("sattn-store")


def sattn_store(*args: str, home: Path) -> subprocess.CompletedProcess:
    """Run the ``sattn-store`` console script."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sampleattn.store.cli"]
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home)}
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=120, env=env)


def _cli_main(argv: list[str]) -> tuple[int, str, str]:
    """``sattn-store`` in this process (for `run_unprivileged`): exit code, stdout, stderr.

    An exception that ``main`` lets through (a traceback, for the user) propagates."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv, out=out)
    return code, out.getvalue(), err.getvalue()


def make_store(folder: Path) -> Path:
    """A populated store in ``folder``, closed (its write-ahead log checkpointed and removed)."""
    path = folder / "store.sqlite"
    with ProfileStore(path) as store:
        populate(store)
    assert sorted(os.listdir(folder)) == ["store.sqlite"]
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_profiles(path: str) -> list[tuple[str, int, str]]:
    with ProfileStore(path, readonly=True) as store:
        return [(p.model, p.seq_len, p.calibration_kind) for p in store.list_profiles()]


EXPECTED = [("llama-toy", 8192, "real"), ("llama-toy", 8192, "synthetic"), ("llama-toy", 32768, "real")]


# ---------------------------------------------------------------------- read-only locations


def test_reader_reads_a_store_in_a_read_only_folder(public_dir):
    path = make_store(public_dir)
    read_only(path)
    read_only(public_dir)
    before = digest(path)
    assert run_unprivileged(_read_profiles, str(path)) == EXPECTED
    assert sorted(os.listdir(public_dir)) == ["store.sqlite"]  # no -wal / -shm left behind
    assert digest(path) == before


def test_reader_of_a_read_only_file_leaves_no_side_files(public_dir):
    path = make_store(public_dir)
    read_only(path)
    writable_by_all(public_dir)  # the folder would let the reader make -wal and -shm files
    assert run_unprivileged(_read_profiles, str(path)) == EXPECTED
    assert sorted(os.listdir(public_dir)) == ["store.sqlite"]


def test_reader_of_a_writable_store_leaves_no_side_files(tmp_path):
    path = make_store(tmp_path)
    assert _read_profiles(str(path)) == EXPECTED
    assert sorted(os.listdir(tmp_path)) == ["store.sqlite"]


def test_read_only_reader_sees_what_a_live_writer_committed(public_dir):
    """With a writer at work (its -wal holds the latest commits), a reader in a read-only
    folder reads through the writer's log: it sees the newest profile."""
    path = make_store(public_dir)
    with ProfileStore(path) as writer:
        writer.save_profile("llama-toy", "16k", {"config": {"alpha": 0.97}}, calibration_kind="real", env={})
        assert Path(f"{path}-wal").stat().st_size > 0
        read_only(public_dir)
        profiles = run_unprivileged(_read_profiles, str(path))
    assert ("llama-toy", 16384, "real") in profiles and len(profiles) == 4


def test_cli_lists_a_store_in_a_read_only_folder(public_dir):
    path = make_store(public_dir)
    read_only(public_dir)
    code, out, err = run_unprivileged(_cli_main, ["--store", str(path), "--format", "json", "list"])
    assert code == 0, err
    assert len(json.loads(out)) == 3
    assert sorted(os.listdir(public_dir)) == ["store.sqlite"]


# ---------------------------------------------------------------------- a damaged file SQLite still opens


def _zero_index_page(path: Path, index: str = "ix_sattn_trials_run_seq_len_state") -> None:
    """Overwrite the root page of ``index`` with zeros (the rest of the file is intact)."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        page = connection.exec_driver_sql("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).scalar()
        page_size = connection.exec_driver_sql("PRAGMA page_size").scalar()
    engine.dispose()
    assert page and page > 1
    with open(path, "r+b") as handle:
        handle.seek((page - 1) * page_size)
        handle.write(bytes(page_size))


@pytest.fixture
def damaged_store(tmp_path) -> Path:
    path = make_store(tmp_path)
    _zero_index_page(path)
    return path


def test_writer_refuses_a_damaged_store_and_leaves_it_untouched(damaged_store):
    before = digest(damaged_store)
    with pytest.raises(CorruptStoreError, match="damaged .*integrity check.*left untouched") as caught:
        ProfileStore(damaged_store)
    assert caught.value.exit_code == 3
    assert digest(damaged_store) == before
    assert sorted(os.listdir(damaged_store.parent)) == ["store.sqlite"]


def test_cli_upgrade_and_import_refuse_a_damaged_store(damaged_store, tmp_path):
    before = digest(damaged_store)
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"format": "sampleattn-profile-store", "format_version": 1,
                                  "exported_at": "2026-01-01T00:00:00Z", "sampleattn_version": "0.1.0",
                                  "schema_revision": "0002"}))
    for command in (["upgrade"], ["import", str(export)]):
        result = sattn_store("--store", str(damaged_store), *command, home=tmp_path)
        assert result.returncode == 3, (command, result.stdout, result.stderr)
        assert "is damaged" in result.stderr and "left untouched" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert digest(damaged_store) == before


def test_tuner_refuses_a_damaged_store(damaged_store, capsys):
    from sampleattn.tuner.cli import main

    before = digest(damaged_store)
    code = main(["--model", "smollm2-135m", "--lengths", "1k", "--calibration", "synthetic",
                 "--store", str(damaged_store), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "is damaged" in captured.err and "left untouched" in captured.err
    assert "ray:" not in captured.out  # refused at once, before any work or any write
    assert digest(damaged_store) == before
    assert sorted(os.listdir(damaged_store.parent)) == ["store.sqlite"]  # no -wal holding writes


# ---------------------------------------------------------------------- permissions


def _open_writer(path: str) -> str:
    with ProfileStore(path) as store:
        return store.schema_revision


def test_writer_in_a_read_only_folder_says_which_folder(public_dir):
    path = make_store(public_dir)
    path.chmod(0o666)  # only the folder is read-only
    read_only(public_dir)
    before = digest(path)
    with pytest.raises(StorePermissionError, match=f"the folder {public_dir} is read-only") as caught:
        run_unprivileged(_open_writer, str(path))
    assert "--store" in str(caught.value) and caught.value.exit_code == 1
    assert digest(path) == before and sorted(os.listdir(public_dir)) == ["store.sqlite"]


def test_writer_of_a_read_only_file_says_which_file(public_dir):
    path = make_store(public_dir)
    read_only(path)
    writable_by_all(public_dir)
    with pytest.raises(StorePermissionError, match=f"the store file {path} is read-only"):
        run_unprivileged(_open_writer, str(path))


def test_reader_of_an_unreadable_file_says_so(public_dir):
    path = make_store(public_dir)
    path.chmod(0o000 if not AS_ROOT else 0o600)  # root's own file: nobody may not read it
    with pytest.raises(StorePermissionError, match=f"cannot read the store file {path}"):
        run_unprivileged(_read_profiles, str(path))


def test_cli_creating_a_store_under_a_read_only_folder(public_dir, tmp_path):
    """A new store whose parent folder cannot be made: a message, exit 1, no traceback."""
    export = public_dir / "export.json"
    with ProfileStore(tmp_path / "source.sqlite") as source:
        add_model(source)
        export.write_text(source.export().model_dump_json())
    read_only(public_dir)
    target = public_dir / "new" / "store.sqlite"
    code, out, err = run_unprivileged(_cli_main, ["--store", str(target), "import", str(export)])
    assert code == 1, (out, err)
    assert f"the folder {public_dir} is read-only for this user" in err, err
    assert not (public_dir / "new").exists()


def test_postgres_role_without_privilege(pg_url, pg_base_url):
    """A writer whose role may not create tables: a permission error naming the store."""
    role = f"sattn_noperm_{uuid.uuid4().hex[:8]}"
    schema = make_url(pg_url).query["options"].split("=", 1)[1]
    admin = create_engine(pg_base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    try:
        url = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
        with pytest.raises(StorePermissionError, match="lacks a privilege .*permission denied"):
            ProfileStore(url)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"REVOKE ALL ON SCHEMA {schema} FROM {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


# ---------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 2 MiB tmpfs (a real file system that fills up), where this machine may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs here ({result.stderr.strip()}); the max_page_count case covers SQLITE_FULL"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(disk: Path) -> None:
    """Write a file until the disk holding ``disk`` has no space left."""
    with open(disk / "filler", "wb") as handle:
        try:
            while True:
                handle.write(bytes(64 * 1024))
                handle.flush()
        except OSError:
            pass


def _big_trial(store: ProfileStore, run, number: int) -> None:
    store.record_trial(run, number, seq_len="8k", state="failed", error_message="x" * 600_000)


def test_full_disk_is_reported_as_such(small_disk):
    path = small_disk / "store.sqlite"
    with ProfileStore(path) as store:
        runs = populate(store)
        _fill(small_disk)
        with pytest.raises(StoreDiskFullError) as caught:
            _big_trial(store, runs["real"], 100)
        assert store.list_profiles()  # the store still reads, as it was
        assert len(store.trials(runs["real"])) == 10
    message = str(caught.value)
    assert f"the disk holding {path}" in message and "is full" in message
    assert "Free space there, or choose another location (--store" in message


def test_cli_import_onto_a_full_disk(small_disk, tmp_path):
    export = tmp_path / "export.json"
    with ProfileStore(tmp_path / "source.sqlite") as source:
        runs = populate(source)
        for number in range(100, 104):  # 2.4 MB of error messages: more than the disk holds
            _big_trial(source, runs["real"], number)
        export.write_text(source.export().model_dump_json())
    result = sattn_store("--store", str(small_disk / "store.sqlite"), "import", str(export), home=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert f"the disk holding {small_disk / 'store.sqlite'}" in result.stderr, result.stderr
    assert "is full" in result.stderr


def test_sqlite_full_from_max_page_count(tmp_path):
    """SQLite's own SQLITE_FULL (a page limit on the connection): the same error, nothing written."""
    path = tmp_path / "store.sqlite"
    with ProfileStore(path) as store:
        runs = populate(store)
    limit = {}

    def _limit_pages(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        limit.setdefault("pages", pages + 4)
        cursor.execute(f"PRAGMA max_page_count={limit['pages']}")
        cursor.close()

    event.listen(Engine, "connect", _limit_pages)
    try:
        with ProfileStore(path) as store:
            with pytest.raises(StoreDiskFullError, match=f"the disk holding {path}"):
                _big_trial(store, runs["real"], 100)
            assert len(store.trials(runs["real"])) == 10
    finally:
        event.remove(Engine, "connect", _limit_pages)


# ---------------------------------------------------------------------- PostgreSQL URLs and drivers


def _plain(url: str) -> str:
    scheme, _, rest = url.partition("://")
    assert scheme.startswith("postgresql")
    return "postgresql://" + rest


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_plain_postgresql_url_works(pg_url):
    url = _plain(pg_url)
    with ProfileStore(url) as store:
        add_model(store)
        assert store.url.startswith(("postgresql+psycopg://", "postgresql+psycopg2://"))
    with ProfileStore(url, readonly=True) as reader:
        assert [m.name for m in reader.list_models()] == ["llama-toy"]


def test_plain_postgresql_url_without_psycopg3(pg_url):
    """Only psycopg2 installed (the import of psycopg 3 fails): the URL still opens."""
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from sampleattn.store import ProfileStore\n"
        "with ProfileStore(sys.argv[1]) as store:\n"
        "    print(store.url.split('://')[0], store.list_models())\n"
    )
    result = _python(code, _plain(pg_url))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["postgresql+psycopg2", "[]"]


def test_missing_postgresql_driver_says_what_to_install(pg_url):
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg2'] = None\n"
        "from sampleattn.store import ProfileStore, StoreError\n"
        "try:\n"
        "    ProfileStore(sys.argv[1])\n"
        "except StoreError as exc:\n"
        "    print(exc)\n"
    )
    result = _python(code, _plain(pg_url))
    assert result.returncode == 0, result.stderr
    assert "pip install 'psycopg[binary]'" in result.stdout and "sampleattn[tune]" in result.stdout, result.stdout


def test_missing_driver_named_in_the_url(tmp_path):
    with pytest.raises(StoreError, match="the Python package pg8000, is not installed.*pip install 'pg8000'"):
        ProfileStore("postgresql+pg8000://user@127.0.0.1:1/db")

