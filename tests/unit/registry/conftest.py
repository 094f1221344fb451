"""The registry's tests run on SQLite and, marked `integration`, on PostgreSQL: one fresh
schema per test in the session's database, migrated with Alembic like production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from registry.app import RegistryConsumer
from registry.db import make_engine, migrate, session_factory
from services.bus import DeadLetter, InMemoryBus
from services.events import CloudEvent
from tests.conftest import unique_name

if TYPE_CHECKING:
    from tests.unit.registry.api_support import Seeded


def postgres_engine(postgres_url: str) -> Engine:
    import psycopg

    schema = unique_name("registry_")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    url = "postgresql+psycopg://" + postgres_url.split("://", 1)[1]
    return make_engine(url, connect_args={"options": f"-csearch_path={schema}"})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        created = make_engine(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    else:
        created = postgres_engine(request.getfixturevalue("postgres_url"))
    migrate(created)
    yield created
    created.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


class Pipeline:
    """The registry consumer on an in-process bus, plus a subscriber to study.processed."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.bus = InMemoryBus(max_attempts=3)
        self.consumer = RegistryConsumer(sessions=sessions, bus=self.bus, source="test/registry")
        self.processed: list[CloudEvent] = []
        self.dead: list[DeadLetter] = []

    async def start(self) -> None:
        await self.bus.subscribe("registry", ["#"], self.consumer)

        async def collect(delivery: object) -> None:
            self.processed.append(delivery.event)  # type: ignore[attr-defined]

        await self.bus.subscribe("test-processed", ["study.processed"], collect)

    async def send(self, *events: CloudEvent) -> None:
        for event in events:
            await self.bus.publish(event)
        await self.bus.drain()
        await asyncio.sleep(0)
        await self.bus.drain()
        self.dead.extend(await self.bus.dead_letters("registry"))


@pytest.fixture
async def pipeline(sessions: sessionmaker[Session]) -> AsyncIterator[Pipeline]:
    running = Pipeline(sessions)
    await running.start()
    yield running
    await running.bus.close()
    assert [d.reason for d in running.dead] == []
    running.consumer.writer.shutdown(wait=True)


@pytest.fixture
async def seeded(pipeline: Pipeline, sessions: sessionmaker[Session],
                 tmp_path: Path) -> AsyncIterator[Seeded]:
    """The registry API over a pipeline seeded with two sites' studies (api_support.seed)."""
    from tests.unit.registry.api_support import build, seed  # it imports Pipeline from here

    await seed(pipeline)
    built = build(sessions, tmp_path)
    async with built.client:
        yield built
