"""Study completion: a study is stable after `stable_seconds` without a new instance.

Produces `study.received`. State lives in the shared state store so several
receiver processes can share one port: every stored instance moves its study's
score (last-instance time) in the `studies:pending` sorted set; a monitor in
each process claims stable studies with a lock, builds the manifest from the
blob store and publishes it. A study is published again (revision + 1) only
when its set of instances changed since the last publish; a re-publish after a
crash between publish and bookkeeping reuses the revision, so its event id is
the same and consumers drop it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from receiver.manifest import build_manifest
from services import metrics
from services.blobstore import FileBlobStore
from services.bus import Bus, PublishError
from services.events import CloudEvent, StudyReceived, make_event
from services.state import StateError, StateStore

log = logging.getLogger(__name__)

PENDING = "studies:pending"
ROUTING_KEY = "study.received"


def _meta_key(study_uid: str) -> str:
    return f"study:{study_uid}:meta"


def _published_key(study_uid: str) -> str:
    return f"study:{study_uid}:published"


class StudyTracker:
    """Called for every stored instance (from handler threads)."""

    def __init__(self, state: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def touch(
        self, *, study_uid: str, site: str, scanner: str, subject_id: str, is_phantom: bool
    ) -> None:
        with self._lock:
            known = study_uid in self._known
        if not known:
            self._state.hset(
                _meta_key(study_uid),
                {
                    "site": site.encode(),
                    "scanner": scanner.encode(),
                    "subject_id": subject_id.encode(),
                    "is_phantom": b"1" if is_phantom else b"0",
                },
            )
            with self._lock:
                if len(self._known) > 10_000:
                    self._known.clear()
                self._known.add(study_uid)
        self._state.zadd(PENDING, study_uid, self._clock())


@dataclass(frozen=True)
class StudyMeta:
    site: str
    scanner: str
    subject_id: str
    is_phantom: bool


class StabilityMonitor:
    """Publishes `study.received` for studies that went quiet."""

    def __init__(
        self,
        *,
        state: StateStore,
        blobs: FileBlobStore,
        bus: Bus,
        stable_seconds: float,
        source: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state, self._blobs, self._bus = state, blobs, bus
        self._stable = stable_seconds
        self._source = source
        self._clock = clock
        self._publish_backoff = 0.0  # seconds; grows while the bus refuses publishes
        self._next_publish_at = 0.0

    async def run_forever(self) -> None:
        interval = min(1.0, max(0.05, self._stable / 4))
        while True:
            try:
                await self.tick()
            except StateError as exc:
                log.error("state store unavailable; retrying", extra={"error": str(exc)})
            await asyncio.sleep(interval)

    async def tick(self) -> list[CloudEvent]:
        """Publish every study that is stable now; returns the events published."""
        if self._clock() < self._next_publish_at:
            return []  # the bus refused recently: back off instead of hammering it
        cutoff = self._clock() - self._stable
        ready = await asyncio.to_thread(self._state.zrange_by_score, PENDING, cutoff)
        published = []
        for study_uid in ready:
            if self._clock() < self._next_publish_at:
                break  # a publish just failed; the rest waits for the backoff too
            try:
                event = await self._complete(study_uid, cutoff)
            except StateError:
                raise
            except Exception:  # one broken study must not stop the others; it stays pending
                log.exception("cannot complete study", extra={"study_uid": study_uid})
                continue
            if event is not None:
                published.append(event)
        return published

    async def complete_now(self, study_uids: set[str]) -> list[CloudEvent]:
        """Publish these studies without waiting for them to go quiet (an import ended)."""
        now = self._clock()
        events = [await self._complete(uid, now) for uid in sorted(study_uids)]
        return [event for event in events if event is not None]

    async def _complete(self, study_uid: str, cutoff: float) -> CloudEvent | None:
        lock_key, token = f"lock:study:{study_uid}", secrets.token_bytes(8)
        if not await asyncio.to_thread(self._state.set_if_absent, lock_key, token, ttl_seconds=120):
            return None  # another receiver process is on it
        try:
            score = await asyncio.to_thread(self._state.zscore, PENDING, study_uid)
            if score is None or score > cutoff:
                return None
            return await self._publish_if_changed(study_uid, score)
        finally:
            await asyncio.to_thread(self._state.delete_if_equal, lock_key, token)

    async def _publish_if_changed(self, study_uid: str, score: float) -> CloudEvent | None:
        meta = await asyncio.to_thread(self._meta, study_uid)
        manifest = await asyncio.to_thread(
            build_manifest,
            self._blobs,
            study_uid=study_uid,
            site=meta.site,
        )
        if manifest is None:
            log.error("pending study has no stored instances", extra={"study_uid": study_uid})
            await asyncio.to_thread(self._state.zrem_if_score, PENDING, study_uid, score)
            return None
        keys_digest = _digest([k for s in manifest.series for k in s.blob_keys])
        previous = await asyncio.to_thread(self._state.hgetall, _published_key(study_uid))
        last_revision = int(previous.get("revision", b"0"))
        event = None
        if previous.get("digest", b"").decode() != keys_digest:
            revision = last_revision + 1
            data = StudyReceived(
                study_uid=study_uid,
                revision=revision,
                site=meta.site,
                scanner=meta.scanner,
                subject_id=meta.subject_id,
                is_phantom=meta.is_phantom,
                **manifest.model_dump(),
            )
            event = make_event(
                ROUTING_KEY,
                data,
                source=self._source,
                subject=study_uid,
                id_parts=(study_uid, revision),
            )
            try:
                await self._bus.publish(event)
            except PublishError as exc:
                self._publish_backoff = min(30.0, max(1.0, self._publish_backoff * 2))
                self._next_publish_at = self._clock() + self._publish_backoff
                log.error(
                    "study.received not confirmed; will retry",
                    extra={"error": str(exc), "retry_in_seconds": self._publish_backoff},
                )
                return None
            self._publish_backoff = 0.0
            metrics.STUDIES_RECEIVED.labels(site=meta.site, scanner=meta.scanner).inc()
            metrics.SCANNER_LAST_STUDY.labels(site=meta.site, scanner=meta.scanner).set(time.time())
            await asyncio.to_thread(
                self._state.hset,
                _published_key(study_uid),
                {
                    "revision": str(revision).encode(),
                    "digest": keys_digest.encode(),
                },
            )
            log.info(
                "study.received published",
                extra={
                    "study_uid": study_uid,
                    "revision": revision,
                    "instances": data.instance_count,
                    "site": meta.site,
                },
            )
        await asyncio.to_thread(self._state.zrem_if_score, PENDING, study_uid, score)
        return event

    def _meta(self, study_uid: str) -> StudyMeta:
        raw = self._state.hgetall(_meta_key(study_uid))
        return StudyMeta(
            site=raw["site"].decode(),
            scanner=raw["scanner"].decode(),
            subject_id=raw["subject_id"].decode(),
            is_phantom=raw.get("is_phantom") == b"1",
        )


def _digest(keys: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(keys)).encode()).hexdigest()
