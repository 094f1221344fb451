"""The registry's HTTP application: `/api/v1` (bearer tokens, site scoping), `/healthz`,
`/readyz`, `/metrics`, the audit log of every call and the human page under `/ui/`.

Every `/api/v1` and `/ui` request is written to the append-only audit log after
its response: token, role, method, path, query, status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.audit import AuditLog
from registry.auth import Principal, TokenCache
from registry.schemas import Health
from services.blobstore import FileBlobStore

log = logging.getLogger(__name__)
COOKIE = "harmonet_token"
AUDITED_PREFIXES = ("/api/", "/ui")
UNLIMITED = frozenset({"/healthz", "/metrics"})


@dataclass(frozen=True)
class RegistryState:
    """What the routes need, built once by the service (or a test)."""

    sessions: sessionmaker[Session]
    blobs: FileBlobStore | None = None
    bus_ready: Callable[[], Awaitable[bool]] | None = None
    dictionary_path: Path | None = None
    known_sites: frozenset[str] | None = None
    tokens: TokenCache = field(default_factory=TokenCache)
    audit: AuditLog = field(init=False)
    read_sessions: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "audit", AuditLog(self.sessions))
        # GET requests read without BEGIN/ROLLBACK round trips; each list is one statement.
        engine = self.sessions.kw["bind"]
        object.__setattr__(self, "read_sessions", sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False))


def registry_state(request: Request) -> RegistryState:
    state: RegistryState = request.app.state.registry
    return state


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request. Creating one costs no I/O (the connection is taken on first
    use, in the endpoint's thread); giving the connection back does, so off the loop."""
    state = registry_state(request)
    session = (state.read_sessions if request.method in ("GET", "HEAD") else state.sessions)()
    try:
        yield session
    finally:
        if session.in_transaction():
            await anyio.to_thread.run_sync(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]
StateDep = Annotated[RegistryState, Depends(registry_state)]
_bearer = HTTPBearer(auto_error=False, description="an API token (`harmonet token create`)")


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    token = credentials.credentials if credentials is not None else request.cookies.get(COOKIE)
    if not token:
        raise unauthorized("missing bearer token")
    state = registry_state(request)
    principal = state.tokens.cached(token)
    if principal is None:
        principal = await anyio.to_thread.run_sync(_lookup, state, token)
    if principal is None:
        raise unauthorized("invalid or revoked token")
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _lookup(state: RegistryState, token: str) -> Principal | None:
    with state.sessions() as session:
        return state.tokens.authenticate(session, token)


def require_role(role: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: PrincipalDep) -> Principal:
        if not principal.can(role):
            raise HTTPException(403, f"needs role {role}")
        return principal

    return check


class AuditMiddleware:
    """Bounds concurrent database requests and records each audited one, after its response.

    The bound (below the connection pool's size) keeps requests from holding every
    worker thread while waiting for a connection that only a thread can give back.
    """

    def __init__(self, app: ASGIApp, *, audit: AuditLog, concurrency: int = 8) -> None:
        self.app = app
        self.audit = audit
        self.concurrency = concurrency
        self._limiter: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._flush: asyncio.Task[int] | None = None

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._limiter[0] is not loop:
            self._limiter = (loop, asyncio.Semaphore(self.concurrency))
        return self._limiter[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED:
            await self.app(scope, receive, send)
            return
        async with self._slots():
            if not scope["path"].startswith(AUDITED_PREFIXES):
                await self.app(scope, receive, send)
                return
            status = 500

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await self.app(scope, receive, capture)
            finally:
                principal = scope.get("state", {}).get("principal")
                query = bytes(scope.get("query_string", b"")).decode("latin-1")[:4000] or None
                due = self.audit.record(method=str(scope["method"]), path=str(scope["path"]),
                                        query=query, status=status, principal=principal)
                if due and (self._flush is None or self._flush.done()):
                    # Off the request's path: the response is already on its way.
                    self._flush = asyncio.create_task(anyio.to_thread.run_sync(self.audit.flush))


def create_app(state: RegistryState) -> FastAPI:
    from registry import clinical_api, routes, web

    app = FastAPI(
        title="HarmoNet registry",
        version="1",
        description="Studies, series, subjects, scanners, compliance, QC, phantom history, "
        "harmonized features and clinical variables of a multi-site MRI study. Every "
        "`/api/v1` call needs a bearer token scoped to sites and a role.",
    )
    app.state.registry = state
    app.add_middleware(AuditMiddleware, audit=state.audit)
    app.include_router(routes.router)
    app.include_router(routes.admin_router)
    app.include_router(clinical_api.router)
    app.include_router(web.router)
    _add_operational_routes(app)
    return app


def _add_operational_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", tags=["ops"], responses={503: {"model": Health}})
    async def readyz(state: StateDep, response: Response) -> Health:
        checks = {"database": "ok", "bus": "ok"}
        try:
            await anyio.to_thread.run_sync(_ping_database, state.sessions)
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        if state.bus_ready is not None and not await state.bus_ready():
            checks["bus"] = "error: unreachable"
        ready = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ready else 503
        return Health(status="ready" if ready else "not ready", checks=checks)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _ping_database(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.execute(text("SELECT 1"))
