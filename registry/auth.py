"""API tokens: a random secret shown once, stored as its SHA-256, scoped to sites and a role.

Roles, each including the one before: `viewer` reads its sites' rows;
`site-manager` also imports clinical data for its sites; `admin` also reads
the audit log and replaces the data dictionary. A token with site `*` covers
every site.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, false, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from registry.models import ApiToken, utcnow

ROLES = ("viewer", "site-manager", "admin")
ALL_SITES = "*"
TOKEN_PREFIX = "hnt_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's row id, role and sites (`None` = every site)."""

    token_id: int
    role: str
    sites: frozenset[str] | None

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, site: str) -> bool:
        return self.sites is None or site in self.sites

    def site_filter(self, column: InstrumentedAttribute[str]) -> ColumnElement[bool]:
        """The WHERE clause every query of site-owned rows carries."""
        if self.sites is None:
            return true()
        if not self.sites:
            return false()
        return column.in_(sorted(self.sites))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    session: Session, *, sites: Sequence[str], role: str, name: str | None = None
) -> str:
    """Store a new token's hash and return the token (the only time it is visible)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not sites:
        raise ValueError("a token needs at least one site (or '*')")
    if ALL_SITES in sites and len(sites) > 1:
        raise ValueError("'*' already covers every site")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(token_hash=hash_token(token), name=name, role=role,
                         sites=sorted(set(sites)), created_at=utcnow()))
    session.flush()
    return token


def authenticate(session: Session, token: str) -> Principal | None:
    return _by_hash(session, hash_token(token))


def _by_hash(session: Session, token_hash: str) -> Principal | None:
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if row is None or row.revoked_at is not None or row.role not in ROLES:
        return None
    sites = [str(s) for s in row.sites]
    return Principal(
        token_id=row.id,
        role=row.role,
        sites=None if ALL_SITES in sites else frozenset(sites),
    )


class TokenCache:
    """Valid tokens remembered for `ttl` seconds (a revocation takes effect within it);
    unknown tokens are looked up every time."""

    def __init__(self, ttl: float = 10.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal of a token validated less than `ttl` seconds ago (no I/O)."""
        with self._lock:
            hit = self._entries.get(hash_token(token))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def authenticate(self, session: Session, token: str) -> Principal | None:
        key = hash_token(token)
        now = time.monotonic()
        principal = _by_hash(session, key)
        if principal is not None:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[key] = (now + self.ttl, principal)
        return principal
