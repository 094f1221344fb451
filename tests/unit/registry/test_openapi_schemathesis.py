"""Schemathesis against the registry's OpenAPI document: no 5xx, no schema violation,
with an admin token (sees everything) on a seeded SQLite registry."""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.checks import positive_data_acceptance

from registry.db import make_engine, migrate, session_factory
from tests.unit.registry.api_support import Seeded, build, seed
from tests.unit.registry.conftest import Pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seeded_registry(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    root = tmp_path_factory.mktemp("schemathesis")
    engine = make_engine(f"sqlite:///{root / 'registry.sqlite3'}")
    migrate(engine)
    sessions = session_factory(engine)

    async def fill() -> None:
        pipeline = Pipeline(sessions)
        await pipeline.start()
        await seed(pipeline)
        await pipeline.bus.close()
        pipeline.consumer.writer.shutdown(wait=True)

    asyncio.run(fill())
    return build(sessions, root)


def test_api_conforms_to_its_schema(seeded_registry: Seeded) -> None:
    """Every operation, driven by hypothesis strategies built from the OpenAPI document
    (schemathesis' pytest plugin does not load on pytest 9, so the loop is explicit)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", seeded_registry.app)
    headers = seeded_registry.auth("admin")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case: Case) -> None:
            # An uploaded file is schema-valid as any bytes; its content (a CSV against the
            # data dictionary) is validated by the endpoint, which answers 400 with errors.
            uploads = case.method in ("POST", "PUT")
            case.call_and_validate(headers=headers,
                                   excluded_checks=[positive_data_acceptance] if uploads else [])

        try:
            check()
        except Exception as exc:
            raise AssertionError(operation.label) from exc
