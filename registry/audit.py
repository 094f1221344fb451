"""The append-only audit log: one row per API or page request (who, what, when, status).

Rows are buffered and written in batches (at most `max_pending` rows or `max_delay`
seconds old, and before the log is read or the service stops), so a request costs no
database round trip of its own; a crash loses at most the last `max_delay` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from registry.auth import Principal
from registry.models import AuditEntry, utcnow
from services import metrics

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session], *, max_pending: int = 200,
                 max_delay: float = 0.5) -> None:
        self.sessions = sessions
        self.max_pending = max_pending
        self.max_delay = max_delay
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._oldest: float | None = None

    def record(self, *, method: str, path: str, query: str | None, status: int,
               principal: Principal | None) -> bool:
        """Buffer one entry; True when the buffer is due to be flushed."""
        action = ("denied" if status in (401, 403) else
                  "read" if method in ("GET", "HEAD") else "write")
        if status in (401, 403):
            reason = "unauthenticated" if status == 401 else "forbidden"
            metrics.REGISTRY_API_DENIED.labels(reason=reason).inc()
        entry = {"at": utcnow(), "token_id": principal.token_id if principal else None,
                 "role": principal.role if principal else None, "action": action,
                 "method": method, "path": path[:1024], "query": query, "status": status,
                 "detail": None}
        now = time.monotonic()
        with self._lock:
            self._pending.append(entry)
            if self._oldest is None:
                self._oldest = now
            return len(self._pending) >= self.max_pending or now - self._oldest >= self.max_delay

    def flush(self) -> int:
        """Write every buffered entry in one transaction (in arrival order)."""
        with self._flushing:
            with self._lock:
                rows, self._pending, self._oldest = self._pending, [], None
            if not rows:
                return 0
            try:
                with self.sessions.begin() as session:
                    session.execute(insert(AuditEntry), rows)
            except Exception:
                with self._lock:  # keep them for the next flush
                    self._pending[:0] = rows
                    self._oldest = self._oldest or time.monotonic()
                log.exception("audit log write failed", extra={"entries": len(rows)})
                return 0
            return len(rows)
