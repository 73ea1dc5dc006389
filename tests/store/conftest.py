"""Fixtures of the store's tests: a store per backend, and helpers that fill it.

Every test that takes ``store_url`` or ``store`` runs once per backend:

* ``sqlite``: a real SQLite file in the test's temporary directory;
* ``postgresql``: a fresh schema in the server named by ``SAMPLEATTN_TEST_PG_URL`` (dropped
  after the test). Without that variable the PostgreSQL cases are skipped; to run them::

      eval "$(scripts/start-postgres.sh)"   # installs and starts a throwaway server on loopback
      .venv/bin/python -m pytest tests/store -q
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ENV = "SAMPLEATTN_TEST_PG_URL"
HERE = Path(__file__).resolve().parent

# The helpers of these tests (store_helpers.py) import as a plain module in any import mode.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from unprivileged import public_dir  # noqa: E402,F401  (a fixture: a folder under /tmp for uid 65534)


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV}; run: eval \"$(scripts/start-postgres.sh)\"")
    return url


@pytest.fixture
def pg_url(pg_base_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema (search_path) of the test server."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = make_url(pg_base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty store location on each backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str) -> Iterator:
    """A writer store (created at the head revision) on each backend."""
    from sampleattn.store import ProfileStore

    with ProfileStore(store_url) as opened:
        yield opened
