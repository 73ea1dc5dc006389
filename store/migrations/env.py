"""Alembic environment of the profile store.

Run by `sampleattn.store.migrate` with a live connection in ``config.attributes``; run by the
``alembic`` command line (developers) with ``sqlalchemy.url`` or ``SAMPLEATTN_STORE``.
Tables other than the store's own (``sattn_*``), such as Optuna's, are ignored.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from sampleattn.store.migrate import VERSION_TABLE
from sampleattn.store.models import Base

config = context.config
target_metadata = Base.metadata


def _include_name(name, type_, parent_names) -> bool:
    if type_ == "table":
        return bool(name) and name.startswith("sattn_") and name != VERSION_TABLE
    return True


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        version_table=VERSION_TABLE,
        include_name=_include_name,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    from sampleattn.store.engine import default_url, normalize_url

    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    env = os.environ.get("SAMPLEATTN_STORE")
    return normalize_url(env) if env else default_url()


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
