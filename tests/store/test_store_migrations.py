"""Schema versions: migrations, upgrade from revision 0001, refusal of newer schemas, corrupt files."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
from pathlib import Path

import pytest

from sqlalchemy import create_engine, text
from store_helpers import FIXTURE_V1, HERE, populate

from sampleattn.config import ModelAttentionProfile
from sampleattn.store import (
    HEAD_REVISION,
    KNOWN_REVISIONS,
    CorruptStoreError,
    ProfileStore,
    SchemaTooNewError,
    SchemaTooOldError,
    StoreNotFoundError,
    content_hash,
)
from sampleattn.store.migrate import VERSION_TABLE, alembic_config, downgrade, upgrade


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_store_v1_fixture", HERE / "make_store_v1_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(path: Path) -> dict[str, bytes]:
    """The bytes of a SQLite file and of its side files that exist."""
    return {
        p.name: p.read_bytes()
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal"))
        if p.exists()
    }


def test_known_revisions_match_the_scripts():
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    chain = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert chain == list(KNOWN_REVISIONS)
    assert scripts.get_current_head() == HEAD_REVISION


def test_models_match_the_migrations(store, store_url):
    """The ORM and the migrations describe the same schema (no autogenerate diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sampleattn.store.models import Base

    engine = create_engine(store_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "compare_type": True,
            "version_table": VERSION_TABLE,
            "include_name": lambda name, type_, parents: type_ != "table" or name.startswith("sattn_"),
        })
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], diff


def test_upgrade_from_the_v1_fixture(tmp_path):
    expected = _fixture_module().EXPECTED
    path = tmp_path / "old.sqlite"
    shutil.copyfile(FIXTURE_V1, path)
    original = path.read_bytes()

    # A reader does not migrate: it says what to do, and leaves the file alone.
    with pytest.raises(SchemaTooOldError, match=r"revision 0001.*sattn-store upgrade"):
        ProfileStore(path, readonly=True)
    assert path.read_bytes() == original

    with ProfileStore(path) as store:  # the writer migrates
        assert store.migrated_from == "0001"
        assert store.schema_revision == HEAD_REVISION
    with ProfileStore(path, readonly=True) as store:
        assert [m.name for m in store.list_models()] == [expected["model"]]
        runs = store.list_runs()
        assert {r.name: len(store.trials(r.name)) for r in runs} == expected["runs"]
        assert all(r.host is None for r in runs)  # the column 0002 added
        assert {(p.seq_len, p.calibration_kind) for p in store.list_profiles()} == expected["profiles"]
        profile = store.get_profile("smollm2-135m", "2k")
        assert profile.content_hash == content_hash(profile.config)
        assert profile.config.head_overrides(0)[2].window_ratio == 0.05
        assert store.get_run("smollm2-135m/1k,2k/essays").search_space["window_ratio"].log is True
        failed = [t for t in store.trials() if t.state == "failed"]
        assert [t.error_message for t in failed] == ["CUDA out of memory"]
        assert len(store.pareto("smollm2-135m", "1k")) >= 1
    with ProfileStore(path) as store:
        assert store.migrated_from is None  # nothing left to do


def test_upgrade_from_v1_on_each_backend(store_url):
    """The same upgrade on a revision-0001 database built by SQL (PostgreSQL included)."""
    module = _fixture_module()
    engine = create_engine(store_url)
    upgrade(engine, "0001")
    with engine.begin() as connection:
        module.populate_v1(connection)
    engine.dispose()
    with pytest.raises(SchemaTooOldError):
        ProfileStore(store_url, readonly=True)
    with ProfileStore(store_url) as store:
        assert store.migrated_from == "0001"
        assert {r.name: len(store.trials(r.name)) for r in store.list_runs()} == module.EXPECTED["runs"]
        assert {(p.seq_len, p.calibration_kind) for p in store.list_profiles()} == module.EXPECTED["profiles"]


def test_downgrade_and_upgrade_keep_the_data(store, store_url):
    populate(store)
    before = store.export().model_dump(exclude={"exported_at"})
    store.close()
    engine = create_engine(store_url)
    downgrade(engine, "0001")  # on SQLite this rebuilds sattn_runs: the trials must survive
    with engine.connect() as connection:
        assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "0001"
        assert connection.execute(text("SELECT count(*) FROM sattn_trials")).scalar() == 11
    engine.dispose()
    with ProfileStore(store_url) as again:
        after = again.export().model_dump(exclude={"exported_at"})
    for run in before["runs"]:
        run["host"] = None  # downgrading dropped it
    assert after == before


def test_a_failed_migration_leaves_nothing_behind(store_url, monkeypatch):
    """Migrations run in one transaction: a reader never sees a half-made schema."""
    from alembic import command
    from sqlalchemy import inspect

    real_upgrade = command.upgrade

    def fail_after_first_revision(config, revision):
        real_upgrade(config, "0001")
        raise RuntimeError("simulated failure in revision 0002")

    monkeypatch.setattr(command, "upgrade", fail_after_first_revision)
    with pytest.raises(RuntimeError, match="simulated"):
        ProfileStore(store_url)
    engine = create_engine(store_url)
    assert [t for t in inspect(engine).get_table_names() if t.startswith("sattn_")] == []
    engine.dispose()
    monkeypatch.setattr(command, "upgrade", real_upgrade)
    with ProfileStore(store_url) as store:
        assert store.schema_revision == HEAD_REVISION


def _set_revision(url: str, revision: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision})
    engine.dispose()


def test_newer_schema_is_refused(store, store_url, backend, tmp_path):
    populate(store)
    store.close()
    _set_revision(store_url, "9999")
    path = tmp_path / "store.sqlite"
    before = _files(path) if backend == "sqlite" else None
    for readonly in (True, False):
        with pytest.raises(SchemaTooNewError) as caught:
            ProfileStore(store_url, readonly=readonly)
        message = str(caught.value)
        assert "9999" in message and HEAD_REVISION in message and "Upgrade sampleattn" in message
        assert caught.value.exit_code == 3
    if backend == "sqlite":
        assert _files(path) == before
    engine = create_engine(store_url)
    with engine.connect() as connection:
        assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "9999"
        assert connection.execute(text("SELECT count(*) FROM sattn_trials")).scalar() == 11
    engine.dispose()


def _damaged_copy(tmp_path: Path) -> Path:
    """A real store whose first page (the schema) is overwritten with noise after the header."""
    path = tmp_path / "damaged.sqlite"
    with ProfileStore(path) as store:
        populate(store)
    data = bytearray(path.read_bytes())
    noise = random.Random(0).randbytes(4000)
    data[100:4100] = noise
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["random", "text", "damaged", "truncated"])
@pytest.mark.parametrize("readonly", [True, False])
def test_corrupt_file_is_refused_and_left_untouched(tmp_path, kind, readonly):
    path = tmp_path / "store.sqlite"
    if kind == "random":
        path.write_bytes(random.Random(1).randbytes(8192))
    elif kind == "text":
        path.write_text("model,length,alpha\nllama,32k,0.95\n")
    elif kind == "damaged":
        path = _damaged_copy(tmp_path)
    else:
        with ProfileStore(path) as store:
            populate(store)
        path.write_bytes(path.read_bytes()[:1000])
    before = _files(path)
    with pytest.raises(CorruptStoreError, match="untouched") as caught:
        with ProfileStore(path, readonly=readonly) as store:
            store.list_profiles()
    assert caught.value.exit_code == 3
    assert _files(path) == before


def test_a_directory_is_not_a_store(tmp_path):
    with pytest.raises(CorruptStoreError, match="directory"):
        ProfileStore(f"sqlite:///{tmp_path}")


def test_missing_store_is_not_created_by_readers(tmp_path):
    path = tmp_path / "sub" / "store.sqlite"
    with pytest.raises(StoreNotFoundError, match="no profile store at"):
        ProfileStore(path, readonly=True)
    assert not path.parent.exists()


def test_sqlite_settings(tmp_path):
    path = tmp_path / "store.sqlite"
    with ProfileStore(path, busy_timeout_s=12.5) as store:
        with store._engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 12500
    with ProfileStore(path, readonly=True) as reader:
        with reader._engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA query_only").scalar() == 1


def test_opening_never_unpickles(tmp_path):
    """No column is a PickleType: the store's data is JSON and plain SQL types only."""
    from sqlalchemy import PickleType

    from sampleattn.store.models import Base

    for table in Base.metadata.tables.values():
        for column in table.columns:
            assert not isinstance(column.type, PickleType), f"{table.name}.{column.name}"
    assert ModelAttentionProfile  # profiles are pydantic models, stored as JSON
    assert os.path.getsize(FIXTURE_V1) > 0
