"""Shared server fixtures: a private RabbitMQ vhost, Redis key prefix and PostgreSQL
database per test session, on servers that are shared and never assumed empty.

Unreachable servers skip the tests that need them locally and fail them when
`CI=true`. Base URLs: `HARMONET_TEST_AMQP_URL`, `HARMONET_TEST_REDIS_URL`,
`HARMONET_TEST_POSTGRES_URL`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from tests.support.ci import skip_or_fail

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def require_server(name: str, reachable: bool, why: str) -> None:
    """Skip (locally) or fail (`CI=true`) the current test when `name` is not usable."""
    if not reachable:
        skip_or_fail(f"{name} not available: {why}")


def _tcp_reachable(url: str, default_port: int) -> tuple[bool, str]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True, ""
    except OSError as exc:
        return False, f"cannot connect to {host}:{port} ({exc})"


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _readiness_restored() -> Iterator[None]:
    """Readiness is process-global (`services.metrics.set_ready`): a test that makes the
    in-process receiver refuse a write must not leave /readyz failing for the next one."""
    yield
    import sys

    metrics = sys.modules.get("services.metrics")
    if metrics is not None:
        for component in list(metrics.not_ready()):
            metrics.set_ready(component, True)


# --- RabbitMQ ---------------------------------------------------------------------


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `rabbitmqctl` on this host (the suite needs it to manage its vhost)."""
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh vhost `harmonet-test-<random>` with the URL's user allowed, deleted at the end."""
    base = os.environ.get("HARMONET_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    reachable, why = _tcp_reachable(base, 5672)
    require_server("RabbitMQ", reachable, why)
    require_server(
        "rabbitmqctl",
        shutil.which("rabbitmqctl") is not None,
        "rabbitmqctl not on PATH (needed to create the test vhost)",
    )
    vhost = unique_name("harmonet-test-")
    user = urlsplit(base).username or "guest"
    created = rabbitmqctl("add_vhost", vhost)
    require_server("RabbitMQ vhost", created.returncode == 0, created.stderr.strip())
    try:
        granted = rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        require_server("RabbitMQ permissions", granted.returncode == 0, granted.stderr.strip())
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_vhost: str) -> str:
    base = os.environ.get("HARMONET_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    return _with_path(base, "/" + quote(rabbitmq_vhost, safe=""))


# --- Redis ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("HARMONET_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    reachable, why = _tcp_reachable(url, 6379)
    require_server("Redis", reachable, why)
    return url


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other session uses; every key under it is deleted at the end."""
    from services.state.redis import RedisStateStore

    prefix = unique_name("harmonet-test-") + ":"
    yield prefix
    store = RedisStateStore(redis_url, prefix=prefix)
    try:
        store.flush_prefix()
    finally:
        store.close()


# --- PostgreSQL -------------------------------------------------------------------


@contextlib.contextmanager
def _fresh_database() -> Iterator[str]:
    """A new database `harmonet_test_<random>` on the test server, dropped at the end."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        pytest.skip("psycopg not installed")
    base = os.environ.get("HARMONET_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    reachable, why = _tcp_reachable(base, 5432)
    require_server("PostgreSQL", reachable, why)
    database = unique_name("harmonet_test_")
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        yield _with_path(base, "/" + database)
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The session's database (tests in it isolate themselves, e.g. by schema)."""
    with _fresh_database() as url:
        yield url


@pytest.fixture
def own_postgres_url() -> Iterator[str]:
    """A database for this test alone: for a whole service (the registry) whose rows the
    test counts."""
    with _fresh_database() as url:
        yield url
