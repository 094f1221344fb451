"""Engine, sessions and schema migrations of the registry database.

PostgreSQL (psycopg) in production, SQLite in `<data dir>/registry.sqlite3` by
default. Migrations are Alembic's (`registry/migrations`), run at start.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from services.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_migrate_lock = threading.Lock()


def database_url(settings: Settings) -> str:
    """`HARMONET_DATABASE_URL`, else SQLite in the data dir; `postgresql://` uses psycopg 3."""
    url = settings.database_url
    if url is None:
        return f"sqlite:///{(settings.data_dir / 'registry.sqlite3').resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the consumer writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent; PostgreSQL serialises concurrent runs).

    All or nothing on both databases: a migration killed or failing half-way (SIGKILL, a
    full disk) leaves the previous schema, so the next start simply runs it again.
    """
    with _migrate_lock:
        if engine.dialect.name != "sqlite":
            command.upgrade(alembic_config(engine), revision)
            return
        migrating = _transactional_sqlite(engine)
        try:
            command.upgrade(alembic_config(migrating), revision)
        finally:
            migrating.dispose()


def _transactional_sqlite(engine: Engine) -> Engine:
    """An engine on the same SQLite file whose transactions include DDL: Python's sqlite3
    commits before every CREATE/ALTER on its own, so SQLAlchemy's recipe takes over BEGIN
    (docs: "Serializable isolation / Savepoints / Transactional DDL" for pysqlite)."""
    migrating = make_engine(engine.url.render_as_string(hide_password=False))

    @event.listens_for(migrating, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(migrating, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return migrating
