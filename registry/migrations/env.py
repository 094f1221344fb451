"""Alembic environment: runs on the engine handed over in `config.attributes`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, text

from registry.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine")
    if not isinstance(engine, Engine):
        raise RuntimeError("registry migrations run through registry.db.migrate(engine)")
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait and find it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(7346221)"))
        # transactional_ddl: SQLite can roll DDL back too (registry.db migrates it on an
        # engine that really begins a transaction), so a half-run migration leaves nothing.
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite",
                          transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
