"""`ProfileStore`: where tuning results live and where the operator finds its parameters.

One writer, many readers:

* The **writer** is the tuning driver (``ProfileStore(url)``). It creates the store when it does
  not exist yet, migrates an older schema to the head revision when it opens it, and is the only
  process that writes: runs, trials, profiles, imports.
* **Readers** (``ProfileStore(url, readonly=True)``: `SampleAttention.from_profile`, the
  ``sattn-store`` commands that only read) never write, not even to create or migrate. A reader
  on a missing store gets `StoreNotFoundError`, on an older schema `SchemaTooOldError` (run
  ``sattn-store upgrade``); any write method raises `ReadOnlyStoreError`.

On SQLite the store uses WAL (readers do not block the writer, nor the writer the readers), a
busy timeout (30 s by default) and foreign keys; readers' connections are ``query_only``
(on PostgreSQL, read-only sessions), so a reader cannot write even through the engine.
Any other SQLAlchemy URL works the same (PostgreSQL is tested). On open, the schema revision
is checked: a revision this package does not know (a newer sampleattn wrote it) raises
`SchemaTooNewError`; a file that is not a SQLite database, or a damaged one, raises
`CorruptStoreError` and is left untouched.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, inspect, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session

from sampleattn import __version__
from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
from sampleattn.lengths import format_length, parse_length

from .buckets import DEFAULT_FAR_RATIO, BucketChoice, choose_bucket
from .errors import (
    CorruptStoreError,
    ImportFormatError,
    ModelNotFoundError,
    ProfileDistanceWarning,
    ProfileNotFoundError,
    ReadOnlyStoreError,
    RunNotFoundError,
    SchemaTooNewError,
    SchemaTooOldError,
    StoreError,
    StoreNotFoundError,
)
from .migrate import HEAD_REVISION, KNOWN_REVISIONS, VERSION_TABLE
from .models import ModelRow, ProfileRow, RunRow, TrialRow
from .pareto import pareto_front
from .schemas import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    CalibrationInfo,
    ImportSummary,
    ModelInfo,
    ParamSpace,
    ProfileRecord,
    RunInfo,
    StoreExport,
    TrialMetrics,
    TrialRecord,
    utcnow,
    validate_env,
)

__all__ = ["ProfileStore", "default_url", "normalize_url"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_STORE_TABLES = ("sattn_models", "sattn_runs", "sattn_trials", "sattn_profiles")
_METRIC_COLUMNS = (
    "rel_error",
    "retained_mass_mean",
    "retained_mass_min",
    "density",
    "latency_ms",
    "dense_latency_ms",
    "speedup",
    "latency_measured",
)


def default_url() -> str:
    """The store's URL when none is given.

    ``SAMPLEATTN_STORE`` (a SQLAlchemy URL or a file path) when set, else the SQLite file
    ``$XDG_CACHE_HOME/sampleattn/profiles.sqlite`` (``~/.cache/sampleattn/profiles.sqlite``).
    """
    env = os.environ.get("SAMPLEATTN_STORE")
    if env:
        return normalize_url(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return normalize_url(Path(cache) / "sampleattn" / "profiles.sqlite")


def normalize_url(location: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL from a URL or a file path (a path means a SQLite file)."""
    text_ = os.fspath(location)
    if "://" in text_:
        return text_
    return "sqlite:///" + str(Path(text_).expanduser().resolve())


def _masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _check_sqlite_file(path: Path) -> None:
    """Raise `CorruptStoreError` unless ``path`` is empty or starts with SQLite's header."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except IsADirectoryError:
        raise CorruptStoreError(f"{path} is a directory, not a SQLite store file") from None
    except OSError as exc:
        raise StoreError(f"cannot read the store file {path}: {exc}") from exc
    if header and header != _SQLITE_MAGIC:
        raise CorruptStoreError(
            f"{path} is not a SQLite database (its first bytes are {header[:16]!r}); it was left "
            "untouched. Point --store / SAMPLEATTN_STORE at a profile store, or move the file away."
        )


def _translate(exc: BaseException, url: str) -> StoreError:
    """Turn a SQLAlchemy / DBAPI error into the store's own exception."""
    message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    lowered = message.lower()
    if any(s in lowered for s in ("not a database", "malformed", "disk image", "file is encrypted")):
        return CorruptStoreError(
            f"the store at {_masked(url)} is damaged ({message}); it was left untouched. "
            "Restore it from a backup or an export (sattn-store import), or move it away."
        )
    if "database is locked" in lowered or "database is busy" in lowered:
        return StoreError(
            f"the store at {_masked(url)} stayed locked past the busy timeout ({message}); another "
            "process holds a long write transaction. Only the tuning driver should write."
        )
    unreachable = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if unreachable or "could not connect" in lowered or ("connection" in lowered and "refused" in lowered):
        return StoreError(f"cannot connect to the store at {_masked(url)}: {message}")
    return StoreError(f"store error at {_masked(url)}: {message}")


class ProfileStore:
    """Tuning runs, trials and profiles in a SQL database (SQLite by default).

    Args:
        url: a SQLAlchemy URL (``sqlite:////path/store.sqlite``,
            ``postgresql+psycopg2://user@host/db``) or a file path; `default_url()` when None.
        readonly: open as a reader: never create, migrate or write (see the module docstring).
        create: (writer only) create the store when the database is empty or the SQLite file
            missing; with False such a store raises `StoreNotFoundError`.
        busy_timeout_s: how long SQLite waits for a lock before giving up.

    Raises:
        StoreNotFoundError: a reader (or ``create=False``) on a missing or empty store.
        SchemaTooNewError: the database has a schema revision this sampleattn does not know.
        SchemaTooOldError: a reader on an older schema (run ``sattn-store upgrade``).
        CorruptStoreError: not a SQLite database, or a damaged one (left untouched).
        StoreError: cannot connect, bad URL, other database errors.

    Use as a context manager, or call `close()`; an open store must not cross a ``fork()``.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        readonly: bool = False,
        create: bool = True,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.url: str = normalize_url(url) if url is not None else default_url()
        self.readonly = readonly
        self.busy_timeout_s = busy_timeout_s
        #: The revision the database had before this store migrated it (None: no migration).
        self.migrated_from: str | None = None
        self._engine: Engine | None = None
        self._sqlite_path: Path | None = None
        try:
            self._engine = self._make_engine(create=create and not readonly)
            self._check_schema(create=create and not readonly)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening and closing

    def _make_engine(self, *, create: bool) -> Engine:
        try:
            url = make_url(self.url)
        except ArgumentError as exc:
            raise StoreError(f"cannot read the store URL {self.url!r}: {exc}") from None
        kwargs: dict[str, Any] = {"json_serializer": partial(json.dumps, allow_nan=False)}
        sqlite = url.get_backend_name() == "sqlite"
        if sqlite:
            database = url.database or ""
            if database in ("", ":memory:") or database.startswith("file:"):
                if self.readonly:
                    raise StoreNotFoundError(f"a reader cannot open the in-memory store {self.url!r}")
            else:
                path = Path(database)
                self._sqlite_path = path
                if not path.exists():
                    if not create:
                        raise StoreNotFoundError(
                            f"no profile store at {path}: run the tuner (sattn-tune) to create one, "
                            "or point --store / SAMPLEATTN_STORE at an existing store"
                        )
                    path.parent.mkdir(parents=True, exist_ok=True)
                else:
                    _check_sqlite_file(path)
            kwargs["connect_args"] = {"timeout": self.busy_timeout_s}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = create_engine(url, **kwargs)
        except (NoSuchModuleError, ImportError, ArgumentError) as exc:
            raise StoreError(f"cannot open the store URL {_masked(self.url)}: {exc}") from None
        if sqlite:
            readonly, timeout_ms = self.readonly, int(self.busy_timeout_s * 1000)

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
                cursor.execute("PRAGMA synchronous=NORMAL")
                if readonly:
                    cursor.execute("PRAGMA query_only=ON")
                cursor.close()

        elif self.readonly and url.get_backend_name() == "postgresql":

            @event.listens_for(engine, "connect")
            def _postgres_read_only(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                cursor.close()
                dbapi_connection.commit()

        return engine

    def _schema_revisions(self) -> tuple[set[str], set[str]]:
        """(revisions in the version table, store tables present)."""
        assert self._engine is not None
        with self._engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            revisions: set[str] = set()
            if VERSION_TABLE in tables:
                rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
                revisions = {row[0] for row in rows}
        return revisions, tables & set(_STORE_TABLES)

    def _check_schema(self, *, create: bool) -> None:
        try:
            revisions, tables = self._schema_revisions()
        except SQLAlchemyError as exc:
            raise _translate(exc, self.url) from exc
        where = _masked(self.url)
        unknown = revisions - set(KNOWN_REVISIONS)
        if unknown:
            raise SchemaTooNewError(
                f"the store at {where} has schema revision {', '.join(sorted(unknown))}, which this "
                f"sampleattn {__version__} (schema {HEAD_REVISION}) does not know: a newer sampleattn "
                "wrote it. Upgrade sampleattn (pip install -U sampleattn) to read it."
            )
        if len(revisions) > 1:
            raise CorruptStoreError(f"the store at {where} records several schema revisions: {sorted(revisions)}")
        current = next(iter(revisions), None)
        if current is None and tables:
            raise CorruptStoreError(
                f"the database at {where} has store tables ({', '.join(sorted(tables))}) but no "
                f"schema version ({VERSION_TABLE}); it was not made by sattn-store, or was damaged"
            )
        if current == HEAD_REVISION:
            self._enable_wal()
            return
        if current is None and not create:
            raise StoreNotFoundError(
                f"no profile store in the database at {where}: run the tuner (sattn-tune) to "
                "create one, or point --store / SAMPLEATTN_STORE at an existing store"
            )
        if current is not None and self.readonly:
            raise SchemaTooOldError(
                f"the store at {where} has schema revision {current}; this sampleattn needs "
                f"{HEAD_REVISION}. Run `sattn-store upgrade --store {where}` (the tuner also "
                "upgrades it when it next writes)."
            )
        self._upgrade(current)

    def _upgrade(self, current: str | None) -> None:
        from . import migrate

        assert self._engine is not None
        try:
            migrate.upgrade(self._engine, HEAD_REVISION)
        except SQLAlchemyError as exc:
            raise _translate(exc, self.url) from exc
        self.migrated_from = current
        self._enable_wal()

    def _enable_wal(self) -> None:
        if self.readonly or self._sqlite_path is None:
            return
        assert self._engine is not None
        try:
            with self._engine.connect() as connection:
                mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
                if str(mode).lower() != "wal":
                    connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        except SQLAlchemyError as exc:
            raise _translate(exc, self.url) from exc

    def close(self) -> None:
        """Release the database connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        return f"ProfileStore({_masked(self.url)!r}, {mode})"

    @property
    def schema_revision(self) -> str:
        """The database's schema revision (always `HEAD_REVISION` once open)."""
        revisions, _ = self._schema_revisions()
        return next(iter(revisions), "")

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """A session that commits (writes) or rolls back, raising the store's own errors."""
        if self._engine is None:
            raise StoreError("the store is closed")
        if write and self.readonly:
            raise ReadOnlyStoreError(
                f"the store at {_masked(self.url)} was opened read-only; only the tuning driver writes "
                "(open it with ProfileStore(url) to write)"
            )
        with Session(self._engine, expire_on_commit=False) as session:
            try:
                yield session
                if write:
                    session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise _translate(exc, self.url) from exc
            except BaseException:
                session.rollback()
                raise

    # ------------------------------------------------------------------ upsert helper

    @staticmethod
    def _upsert(session: Session, row_cls: Any, values: dict[str, Any], key: Sequence[str]) -> int:
        """Insert ``values`` or update the row with the same natural ``key``; return its id.

        ``created_at`` is kept on update. ON CONFLICT on SQLite and PostgreSQL; a select then
        insert or update elsewhere (safe under the one-writer rule).
        """
        table = row_cls.__table__
        dialect = session.get_bind().dialect.name
        updates = {k: v for k, v in values.items() if k not in key and k != "created_at"}
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            statement = insert(table).values(**values)
            statement = statement.on_conflict_do_update(
                index_elements=list(key), set_={k: statement.excluded[k] for k in updates}
            )
            session.execute(statement)
        else:
            where = [table.c[k] == values[k] for k in key]
            existing = session.execute(select(table.c.id).where(*where).with_for_update()).scalar()
            if existing is None:
                session.execute(table.insert().values(**values))
            else:
                session.execute(table.update().where(table.c.id == existing).values(**updates))
        row_id = session.execute(select(table.c.id).where(*[table.c[k] == values[k] for k in key])).scalar_one()
        return int(row_id)

    # ------------------------------------------------------------------ models

    def register_model(self, info: ModelInfo | Mapping[str, Any] | None = None, **fields: Any) -> ModelInfo:
        """Insert or update a model (by name); returns the validated `ModelInfo`."""
        model = ModelInfo.model_validate({**(dict(info) if isinstance(info, Mapping) else
                                             info.model_dump() if info is not None else {}), **fields})
        with self._session(write=True) as session:
            self._write_model(session, model, utcnow())
        return model

    def _write_model(self, session: Session, model: ModelInfo, now: datetime) -> int:
        values = {**model.model_dump(), "created_at": now, "updated_at": now}
        return self._upsert(session, ModelRow, values, ["name"])

    def _model_id(self, session: Session, name: str) -> int:
        model_id = session.execute(select(ModelRow.id).where(ModelRow.name == name)).scalar()
        if model_id is None:
            raise ModelNotFoundError(
                f"no model {name!r} in the store at {_masked(self.url)}; known: "
                f"{', '.join(self._model_names(session)) or 'none'}. Register it (register_model) "
                "or tune it (sattn-tune --model NAME)"
            )
        return int(model_id)

    @staticmethod
    def _model_names(session: Session) -> list[str]:
        return list(session.execute(select(ModelRow.name).order_by(ModelRow.name)).scalars())

    def get_model(self, name: str) -> ModelInfo:
        """The model of that name (`ModelNotFoundError` if none)."""
        with self._session() as session:
            model_id = self._model_id(session, name)
            return _model_info(session.get_one(ModelRow, model_id))

    def list_models(self) -> list[ModelInfo]:
        """All models, by name."""
        with self._session() as session:
            return [_model_info(row) for row in session.execute(select(ModelRow).order_by(ModelRow.name)).scalars()]

    def delete_model(self, name: str) -> None:
        """Delete a model with all its runs, trials and profiles."""
        with self._session(write=True) as session:
            model_id = self._model_id(session, name)
            session.execute(delete(ModelRow).where(ModelRow.id == model_id))

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        model: str,
        *,
        name: str,
        lengths: Iterable[int | str],
        objective: str,
        calibration: CalibrationInfo | Mapping[str, Any],
        max_error: float | None = None,
        min_retained_mass: float | None = None,
        search_space: Mapping[str, ParamSpace | Mapping[str, Any]] | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        env: Mapping[str, Any] | None = None,
        device: str | None = None,
        host: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> RunInfo:
        """Record the start of a tuning run (the model must be registered).

        ``env`` defaults to `sampleattn.env.collect_env()` (which imports torch), ``device`` to
        ``env["device"]`` and ``host`` to this machine's name. A run of the same ``name``
        raises `StoreError`, unless ``resume=True``: then the existing run is returned, set
        back to ``running`` (its other fields are kept; see `find_run`).
        """
        if env is None:
            from sampleattn.env import collect_env

            env = collect_env()
        env_info = validate_env(env)
        now = utcnow()
        run = RunInfo(
            name=name,
            model=model,
            lengths=[parse_length(n) for n in lengths],
            objective=objective,
            max_error=max_error,
            min_retained_mass=min_retained_mass,
            calibration=calibration,
            search_space=dict(search_space or {}),
            sampler=sampler,
            seed=seed,
            device=device if device is not None else (str(env_info.get("device")) if env_info.get("device") else None),
            host=host if host is not None else socket.gethostname(),
            env=env_info,
            attrs=dict(attrs or {}),
            status="running",
            started_at=now,
        )
        with self._session(write=True) as session:
            existing = session.execute(select(RunRow).where(RunRow.name == name)).scalar()
            if existing is not None:
                existing_model = session.get_one(ModelRow, existing.model_id).name
                if not resume:
                    raise StoreError(
                        f"a run named {name!r} exists already (model {existing_model}, status "
                        f"{existing.status}); resume it (resume=True / find_run) or choose another name"
                    )
                if existing_model != model:
                    raise StoreError(f"run {name!r} belongs to model {existing_model!r}, not {model!r}")
                existing.status = "running"
                existing.finished_at = None
                session.flush()
                return _run_info(existing, existing_model)
            session.add(self._run_row(session, run))
        return run

    def _run_row(self, session: Session, run: RunInfo) -> RunRow:
        return RunRow(
            name=run.name,
            model_id=self._model_id(session, run.model),
            lengths=list(run.lengths),
            objective=run.objective,
            max_error=run.max_error,
            min_retained_mass=run.min_retained_mass,
            calibration_kind=run.calibration.kind,
            calibration_source=run.calibration.source,
            calibration_fingerprint=run.calibration.fingerprint,
            calibration_samples=run.calibration.samples,
            search_space={k: v.model_dump(mode="json") for k, v in run.search_space.items()},
            sampler=run.sampler,
            seed=run.seed,
            device=run.device,
            host=run.host,
            env=dict(run.env),
            attrs=dict(run.attrs),
            status=run.status,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )

    def _run_row_for(self, session: Session, run: RunInfo | str | int) -> RunRow:
        if isinstance(run, RunInfo):
            run = run.name
        if isinstance(run, int) and not isinstance(run, bool):
            row = session.get(RunRow, run)
        else:
            row = session.execute(select(RunRow).where(RunRow.name == str(run))).scalar()
        if row is None:
            raise RunNotFoundError(f"no tuning run {run!r} in the store at {_masked(self.url)}")
        return row

    def find_run(self, name: str) -> RunInfo | None:
        """The run of that name, or None: how the tuner finds the run it resumes."""
        with self._session() as session:
            row = session.execute(select(RunRow).where(RunRow.name == name)).scalar()
            return None if row is None else _run_info(row, session.get_one(ModelRow, row.model_id).name)

    def get_run(self, run: str | int) -> RunInfo:
        """The run of that name (or id); `RunNotFoundError` if none."""
        with self._session() as session:
            row = self._run_row_for(session, run)
            return _run_info(row, session.get_one(ModelRow, row.model_id).name)

    def list_runs(self, model: str | None = None) -> list[RunInfo]:
        """Runs, oldest first, of one model or of all."""
        with self._session() as session:
            query = select(RunRow, ModelRow.name).join(ModelRow, RunRow.model_id == ModelRow.id)
            if model is not None:
                query = query.where(ModelRow.id == self._model_id(session, model))
            rows = session.execute(query.order_by(RunRow.started_at, RunRow.id)).all()
            return [_run_info(row, name) for row, name in rows]

    def finish_run(
        self, run: RunInfo | str | int, status: str = "complete", *, finished_at: datetime | None = None
    ) -> RunInfo:
        """Set a run's final status (``complete``, ``failed``, ``interrupted``) and end time."""
        if status not in ("complete", "failed", "interrupted", "running"):
            raise ValueError(f"status {status!r} is not one of complete, failed, interrupted, running")
        with self._session(write=True) as session:
            row = self._run_row_for(session, run)
            row.status = status
            row.finished_at = None if status == "running" else (finished_at or utcnow())
            session.flush()
            return _run_info(row, session.get_one(ModelRow, row.model_id).name)

    def delete_run(self, run: RunInfo | str | int) -> None:
        """Delete a run and its trials; profiles that came from it keep their config (run: None)."""
        with self._session(write=True) as session:
            row = self._run_row_for(session, run)
            session.execute(delete(RunRow).where(RunRow.id == row.id))

    # ------------------------------------------------------------------ trials

    def record_trial(
        self,
        run: RunInfo | str | int,
        number: int,
        *,
        seq_len: int | str,
        state: Any,
        params: Mapping[str, Any] | None = None,
        config: ModelAttentionProfile | SampleAttentionConfig | Mapping[str, Any] | None = None,
        metrics: TrialMetrics | Mapping[str, Any] | None = None,
        worker: str | None = None,
        device: str | None = None,
        duration_s: float | None = None,
        error_message: str | None = None,
        study: str | None = None,
    ) -> TrialRecord:
        """Record one trial, or update it: idempotent on (run, study, Optuna trial number).

        ``state`` is ``running``, ``complete``, ``pruned`` or ``failed`` (or an Optuna
        ``TrialState``); ``study`` defaults to the run's name; ``seq_len`` must be one of the
        run's lengths. A resumed run may re-report a trial: the second report replaces the
        first, ``created_at`` stays.
        """
        now = utcnow()
        with self._session(write=True) as session:
            run_row = self._run_row_for(session, run)
            record = TrialRecord(
                run=run_row.name,
                study=study or run_row.name,
                number=number,
                seq_len=parse_length(seq_len),
                state=state,
                params=dict(params or {}),
                config=_as_profile(config) if config is not None else None,
                metrics=metrics if metrics is not None else TrialMetrics(),
                worker=worker,
                device=device,
                duration_s=duration_s,
                error_message=error_message,
                created_at=now,
                updated_at=now,
            )
            if record.seq_len not in run_row.lengths:
                raise ValueError(
                    f"trial {number} is at length {format_length(record.seq_len)}, not one of run "
                    f"{run_row.name!r}'s lengths ({', '.join(format_length(n) for n in run_row.lengths)})"
                )
            self._upsert(session, TrialRow, _trial_values(record, run_row.id), ["run_id", "study", "number"])
        return record

    def mark_running_trials_failed(
        self, run: RunInfo | str | int, message: str = "the tuning driver stopped before the trial finished"
    ) -> int:
        """Crash recovery: set the run's ``running`` trials to ``failed``; returns how many."""
        with self._session(write=True) as session:
            run_row = self._run_row_for(session, run)
            result = session.execute(
                update(TrialRow)
                .where(TrialRow.run_id == run_row.id, TrialRow.state == "running")
                .values(state="failed", error_message=message, updated_at=utcnow())
            )
            return int(result.rowcount or 0)

    def trials(
        self,
        run: RunInfo | str | int | None = None,
        *,
        model: str | None = None,
        seq_len: int | str | None = None,
        states: Iterable[str] | None = None,
        study: str | None = None,
    ) -> list[TrialRecord]:
        """Trials filtered by run, model, length, state and study; by run, study and number."""
        with self._session() as session:
            query = select(TrialRow, RunRow.name).join(RunRow, TrialRow.run_id == RunRow.id)
            if run is not None:
                query = query.where(TrialRow.run_id == self._run_row_for(session, run).id)
            if model is not None:
                query = query.where(RunRow.model_id == self._model_id(session, model))
            if seq_len is not None:
                query = query.where(TrialRow.seq_len == parse_length(seq_len))
            if states is not None:
                query = query.where(TrialRow.state.in_([str(s) for s in states]))
            if study is not None:
                query = query.where(TrialRow.study == study)
            query = query.order_by(RunRow.started_at, RunRow.id, TrialRow.study, TrialRow.number)
            return [_trial_record(row, name) for row, name in session.execute(query).all()]

    def pareto(
        self,
        model: str,
        seq_len: int | str,
        *,
        run: RunInfo | str | int | None = None,
        calibration_kind: str | None = None,
    ) -> list[TrialRecord]:
        """The non-dominated complete trials of a model at one length, on (rel_error, latency_ms).

        Trials of every run of the model at exactly ``seq_len`` (or of one ``run``; of one
        ``calibration_kind``), with both metrics present; sorted by latency. Empty when there is
        no such trial (`ModelNotFoundError` when the model is unknown).
        """
        length = parse_length(seq_len)
        with self._session() as session:
            model_id = self._model_id(session, model)
            query = (
                select(TrialRow, RunRow.name)
                .join(RunRow, TrialRow.run_id == RunRow.id)
                .where(
                    RunRow.model_id == model_id,
                    TrialRow.seq_len == length,
                    TrialRow.state == "complete",
                    TrialRow.rel_error.is_not(None),
                    TrialRow.latency_ms.is_not(None),
                )
            )
            if run is not None:
                query = query.where(TrialRow.run_id == self._run_row_for(session, run).id)
            if calibration_kind is not None:
                query = query.where(RunRow.calibration_kind == calibration_kind)
            rows = session.execute(query.order_by(TrialRow.id)).all()
            candidates = [_trial_record(row, name) for row, name in rows]
        return pareto_front(candidates, key=lambda t: (t.metrics.rel_error, t.metrics.latency_ms))

    def tuned_lengths(self, model: str) -> list[int]:
        """The lengths a model has trials at (any run, any state), ascending."""
        with self._session() as session:
            model_id = self._model_id(session, model)
            query = (
                select(TrialRow.seq_len)
                .join(RunRow, TrialRow.run_id == RunRow.id)
                .where(RunRow.model_id == model_id)
                .distinct()
            )
            return sorted(int(n) for n in session.execute(query).scalars())

    # ------------------------------------------------------------------ profiles

    def save_profile(
        self,
        model: str,
        seq_len: int | str,
        config: ModelAttentionProfile | SampleAttentionConfig | Mapping[str, Any],
        *,
        calibration_kind: str | None = None,
        metrics: TrialMetrics | Mapping[str, Any] | None = None,
        run: RunInfo | str | int | None = None,
        device: str | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> ProfileRecord:
        """Insert or replace the profile of (model, seq_len, calibration kind): an upsert.

        ``config`` is validated as a `ModelAttentionProfile` (a bare `SampleAttentionConfig`
        becomes its global config) and its layer and head indices are checked against the
        model's geometry. ``calibration_kind`` defaults to the run's (and must agree with it);
        ``env`` and ``device`` default to the run's, or to `collect_env()` without a run.
        """
        length = parse_length(seq_len)
        profile = _as_profile(config)
        now = utcnow()
        with self._session(write=True) as session:
            model_id = self._model_id(session, model)
            _check_geometry(profile, _model_info(session.get_one(ModelRow, model_id)))
            run_row = self._run_row_for(session, run) if run is not None else None
            if run_row is not None:
                if run_row.model_id != model_id:
                    raise ValueError(f"run {run_row.name!r} is not a run of model {model!r}")
                if calibration_kind is not None and calibration_kind != run_row.calibration_kind:
                    raise ValueError(
                        f"calibration_kind={calibration_kind!r} but run {run_row.name!r} was calibrated "
                        f"on {run_row.calibration_kind!r} data"
                    )
                calibration_kind = run_row.calibration_kind
                if env is None:
                    env = run_row.env
                if device is None:
                    device = run_row.device
            if calibration_kind is None:
                raise ValueError("calibration_kind ('real' or 'synthetic') is required for a profile without a run")
            if env is None:
                from sampleattn.env import collect_env

                env = collect_env()
            env_info = validate_env(env)
            record = ProfileRecord(
                model=model,
                seq_len=length,
                calibration_kind=calibration_kind,
                config=profile,
                metrics=metrics if metrics is not None else TrialMetrics(),
                run=run_row.name if run_row is not None else None,
                device=device if device is not None else (str(env_info["device"]) if env_info.get("device") else None),
                env=env_info,
                created_at=now,
                updated_at=now,
            )
            self._write_profile(session, record, model_id, run_row.id if run_row is not None else None)
        return record

    def _write_profile(self, session: Session, record: ProfileRecord, model_id: int, run_id: int | None) -> int:
        values = {
            "model_id": model_id,
            "seq_len": record.seq_len,
            "calibration_kind": record.calibration_kind,
            "config": record.config.model_dump(mode="json"),
            "metrics": record.metrics.model_dump(mode="json"),
            "run_id": run_id,
            "device": record.device,
            "env": dict(record.env),
            "content_hash": record.content_hash,
            "created_at": record.created_at or utcnow(),
            "updated_at": record.updated_at or utcnow(),
        }
        return self._upsert(session, ProfileRow, values, ["model_id", "seq_len", "calibration_kind"])

    def resolve_profile(
        self,
        model: str,
        seq_len: int | str,
        *,
        allow_synthetic: bool = False,
        far_ratio: float = DEFAULT_FAR_RATIO,
    ) -> tuple[ProfileRecord, BucketChoice]:
        """Like `get_profile`, and also return the bucket rule's choice (no warning here)."""
        length = parse_length(seq_len)
        with self._session() as session:
            model_row = session.execute(select(ModelRow).where(ModelRow.name == model)).scalar()
            if model_row is None:
                raise ProfileNotFoundError(
                    f"no profile for model {model!r}: the store at {_masked(self.url)} does not know it "
                    f"(models: {', '.join(self._model_names(session)) or 'none'}). Tune it: "
                    f"sattn-tune --model {model} --lengths {format_length(length)}"
                )
            rows = session.execute(
                select(ProfileRow, RunRow.name)
                .outerjoin(RunRow, ProfileRow.run_id == RunRow.id)
                .where(ProfileRow.model_id == model_row.id)
            ).all()
            records = [_profile_record(row, model, run_name) for row, run_name in rows]
        real = [r for r in records if r.calibration_kind == "real"]
        synthetic = [r for r in records if r.calibration_kind == "synthetic"]
        if real:
            candidates = real
        elif synthetic and allow_synthetic:
            candidates = synthetic
        elif synthetic:
            raise ProfileNotFoundError(
                f"model {model!r} has only profiles tuned on synthetic calibration data (at "
                f"{', '.join(format_length(r.seq_len) for r in sorted(synthetic, key=lambda r: r.seq_len))}); "
                "they are dry-run results, not tuned on real text. Tune on real data "
                f"(sattn-tune --model {model}), or pass allow_synthetic=True (--allow-synthetic) to use them"
            )
        else:
            raise ProfileNotFoundError(
                f"model {model!r} has no profile in the store at {_masked(self.url)}; tune it: "
                f"sattn-tune --model {model} --lengths {format_length(length)}"
            )
        choice = choose_bucket((r.seq_len for r in candidates), length, far_ratio=far_ratio)
        assert choice is not None
        profile = next(r for r in candidates if r.seq_len == choice.length)
        return profile, choice

    def get_profile(
        self,
        model: str,
        seq_len: int | str,
        *,
        allow_synthetic: bool = False,
        far_ratio: float = DEFAULT_FAR_RATIO,
    ) -> ProfileRecord:
        """The profile to use for ``model`` at ``seq_len`` tokens, by the bucket rule.

        Among the model's profiles tuned on real calibration data: the one at the largest tuned
        length not above ``seq_len``, else at the smallest above it (`choose_bucket`). A
        `ProfileDistanceWarning` is emitted when that length differs from ``seq_len`` by more
        than ``far_ratio`` (2x). Profiles tuned on synthetic data are used only with
        ``allow_synthetic=True``, and only when the model has no real one.

        Raises:
            ProfileNotFoundError: the model is unknown, has no profile, or only synthetic ones
                (the message says which, and what to do).
        """
        profile, choice = self.resolve_profile(model, seq_len, allow_synthetic=allow_synthetic, far_ratio=far_ratio)
        if choice.far:
            warnings.warn(
                f"using the profile of {model} tuned at {format_length(choice.length)} for a length of "
                f"{format_length(choice.requested)} ({choice.ratio:.1f}x away); tune that length for "
                f"better parameters: sattn-tune --model {model} --lengths {format_length(choice.requested)}",
                ProfileDistanceWarning,
                stacklevel=2,
            )
        return profile

    def list_profiles(self, model: str | None = None, *, calibration_kind: str | None = None) -> list[ProfileRecord]:
        """Profiles by model, length and calibration kind (of one model or all)."""
        with self._session() as session:
            query = (
                select(ProfileRow, ModelRow.name, RunRow.name)
                .join(ModelRow, ProfileRow.model_id == ModelRow.id)
                .outerjoin(RunRow, ProfileRow.run_id == RunRow.id)
            )
            if model is not None:
                query = query.where(ProfileRow.model_id == self._model_id(session, model))
            if calibration_kind is not None:
                query = query.where(ProfileRow.calibration_kind == calibration_kind)
            query = query.order_by(ModelRow.name, ProfileRow.seq_len, ProfileRow.calibration_kind)
            return [_profile_record(row, name, run) for row, name, run in session.execute(query).all()]

    def delete_profile(
        self, model: str, seq_len: int | str | None = None, *, calibration_kind: str | None = None
    ) -> int:
        """Delete a model's profiles (at one length / of one calibration kind); returns how many."""
        with self._session(write=True) as session:
            query = delete(ProfileRow).where(ProfileRow.model_id == self._model_id(session, model))
            if seq_len is not None:
                query = query.where(ProfileRow.seq_len == parse_length(seq_len))
            if calibration_kind is not None:
                query = query.where(ProfileRow.calibration_kind == calibration_kind)
            return int(session.execute(query).rowcount or 0)

    # ------------------------------------------------------------------ export / import

    def export(self, models: Iterable[str] | None = None, *, include_trials: bool = True) -> StoreExport:
        """The store (or some models) as a `StoreExport`; ``.model_dump_json()`` writes it."""
        names = None if models is None else list(models)
        with self._session() as session:
            if names is not None:
                for name in names:
                    self._model_id(session, name)
        selected = [m for m in self.list_models() if names is None or m.name in names]
        keep = {m.name for m in selected}
        runs = [r for r in self.list_runs() if r.model in keep]
        trials: list[TrialRecord] = []
        if include_trials:
            run_names = {r.name for r in runs}
            trials = [t for t in self.trials() if t.run in run_names]
        profiles = [p for p in self.list_profiles() if p.model in keep]
        return StoreExport(
            exported_at=utcnow(),
            sampleattn_version=__version__,
            schema_revision=self.schema_revision,
            models=selected,
            runs=runs,
            trials=trials,
            profiles=profiles,
        )

    def import_(self, data: StoreExport | Mapping[str, Any] | str | os.PathLike[str]) -> ImportSummary:
        """Import an export (object, dict, JSON text or file path), in one transaction.

        Rows are matched on their natural keys and upserted: models by name, runs by name,
        trials by (run, study, number), profiles by (model, length, calibration kind). The
        timestamps of the export are kept. Returns the counts written.

        Raises:
            ImportFormatError: not a store export, a newer format version, or invalid content.
        """
        export = _read_export(data)
        with self._session(write=True) as session:
            now = utcnow()
            model_ids = {m.name: self._write_model(session, m, now) for m in export.models}
            for run in export.runs:
                if run.model not in model_ids:
                    model_ids[run.model] = self._model_id(session, run.model)
            run_ids: dict[str, int] = {}
            for run in export.runs:
                row = self._run_row(session, run)
                values = {c.name: getattr(row, c.name) for c in RunRow.__table__.columns if c.name != "id"}
                run_ids[run.name] = self._upsert(session, RunRow, values, ["name"])
            for trial in export.trials:
                run_id = run_ids.get(trial.run) or self._run_row_for(session, trial.run).id
                self._upsert(session, TrialRow, _trial_values(trial, run_id), ["run_id", "study", "number"])
            for profile in export.profiles:
                model_id = model_ids.get(profile.model) or self._model_id(session, profile.model)
                _check_geometry(profile.config, _model_info(session.get_one(ModelRow, model_id)))
                run_id = None
                if profile.run is not None:
                    run_id = run_ids.get(profile.run) or self._run_row_for(session, profile.run).id
                self._write_profile(session, profile, model_id, run_id)
        return ImportSummary(
            models=len(export.models), runs=len(export.runs), trials=len(export.trials), profiles=len(export.profiles)
        )


# ---------------------------------------------------------------------- helpers


def _read_export(data: StoreExport | Mapping[str, Any] | str | os.PathLike[str]) -> StoreExport:
    if isinstance(data, StoreExport):
        return data
    if isinstance(data, os.PathLike) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        try:
            data = Path(data).read_text()
        except OSError as exc:
            raise ImportFormatError(f"cannot read the export file {data}: {exc}") from exc
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"the export is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ImportFormatError(f"not a sampleattn store export (format {found!r}, expected {EXPORT_FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
        raise ImportFormatError(
            f"the export has format version {version!r}; this sampleattn {__version__} reads versions up to "
            f"{EXPORT_FORMAT_VERSION}. Upgrade sampleattn to import it."
        )
    try:
        return StoreExport.model_validate(data)
    except ValueError as exc:
        raise ImportFormatError(f"the export does not validate: {exc}") from exc


def _as_profile(config: ModelAttentionProfile | SampleAttentionConfig | Mapping[str, Any]) -> ModelAttentionProfile:
    if isinstance(config, ModelAttentionProfile):
        return config
    if isinstance(config, SampleAttentionConfig):
        return ModelAttentionProfile(config=config)
    return ModelAttentionProfile.model_validate(config)


def _check_geometry(profile: ModelAttentionProfile, model: ModelInfo) -> None:
    profile.check_geometry(model.num_layers, model.num_q_heads, model=model.name)


def _trial_values(record: TrialRecord, run_id: int) -> dict[str, Any]:
    metrics = record.metrics
    return {
        "run_id": run_id,
        "study": record.study,
        "number": record.number,
        "seq_len": record.seq_len,
        "state": record.state,
        "params": dict(record.params),
        "config": record.config.model_dump(mode="json") if record.config is not None else None,
        **{name: getattr(metrics, name) for name in _METRIC_COLUMNS},
        "extra_metrics": dict(metrics.extra),
        "worker": record.worker,
        "device": record.device,
        "duration_s": record.duration_s,
        "error_message": record.error_message,
        "created_at": record.created_at or utcnow(),
        "updated_at": record.updated_at or utcnow(),
    }


def _model_info(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        name=row.name,
        hf_id=row.hf_id,
        family=row.family,
        num_layers=row.num_layers,
        num_q_heads=row.num_q_heads,
        num_kv_heads=row.num_kv_heads,
        head_dim=row.head_dim,
        trained_context=row.trained_context,
    )


def _run_info(row: RunRow, model: str) -> RunInfo:
    return RunInfo(
        name=row.name,
        model=model,
        lengths=list(row.lengths),
        objective=row.objective,
        max_error=row.max_error,
        min_retained_mass=row.min_retained_mass,
        calibration=CalibrationInfo(
            kind=row.calibration_kind,
            source=row.calibration_source,
            fingerprint=row.calibration_fingerprint,
            samples=row.calibration_samples,
        ),
        search_space=row.search_space or {},
        sampler=row.sampler,
        seed=row.seed,
        device=row.device,
        host=row.host,
        env=row.env or {},
        attrs=row.attrs or {},
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _trial_record(row: TrialRow, run: str) -> TrialRecord:
    metrics = {name: getattr(row, name) for name in _METRIC_COLUMNS}
    return TrialRecord(
        run=run,
        study=row.study,
        number=row.number,
        seq_len=row.seq_len,
        state=row.state,
        params=row.params or {},
        config=row.config,
        metrics=TrialMetrics(**metrics, extra=row.extra_metrics or {}),
        worker=row.worker,
        device=row.device,
        duration_s=row.duration_s,
        error_message=row.error_message,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _profile_record(row: ProfileRow, model: str, run: str | None) -> ProfileRecord:
    return ProfileRecord(
        model=model,
        seq_len=row.seq_len,
        calibration_kind=row.calibration_kind,
        config=row.config,
        metrics=row.metrics or {},
        run=run,
        device=row.device,
        env=row.env or {},
        content_hash=row.content_hash,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
