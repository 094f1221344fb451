"""The Alembic migrations build exactly the schema the models declare (SQLite and
PostgreSQL), and running them again changes nothing."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from registry.db import migrate
from registry.models import Base


def test_migrations_match_the_models(engine: Engine) -> None:
    migrate(engine)  # idempotent: the fixture already migrated
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_a_migration_failing_half_way_leaves_no_trace_on_sqlite(tmp_path, monkeypatch) -> None:
    """A SIGKILL or a full disk in the middle of the first migration must not leave tables
    behind that make every later start fail with "table ... already exists"."""
    import pytest
    from alembic.operations import Operations
    from sqlalchemy import inspect

    from registry.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    created: list[str] = []
    original = Operations.create_table

    def create_table_then_fail(self, name, *columns, **kw):  # type: ignore[no-untyped-def]
        result = original(self, name, *columns, **kw)
        created.append(name)
        if len(created) == 3:
            raise OSError("database or disk is full")
        return result

    monkeypatch.setattr(Operations, "create_table", create_table_then_fail)
    with pytest.raises(OSError):
        migrate(engine)
    assert len(created) == 3
    assert inspect(engine).get_table_names() == []  # rolled back, tables and version alike
    monkeypatch.undo()
    migrate(engine)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
