"""`harmonet reprocess`: stored studies through the pipeline again, as new revisions.

Produces `study.received` (source `harmonet/reprocess/<host>`) for each study, after a
protocol or model change. Each publish is a new revision of the study (last published
+ 1), recorded per run: a run retried with the same `--run-id` publishes the revision it
assigned the first time again, with the same event id, so consumers drop it; a new run
makes a new revision. Revisions and the study's scanner, subject and phantom flag come
from the state store (the receiver's own records), else from the last `study.received`
in the event journal (embedded mode after a restart).

With a broker (`HARMONET_AMQP_URL`) the command publishes itself. The embedded bus of
`harmonet up` lives inside that process, so there the command drops a request file in
`<data dir>/reprocess/requests/` and the `reprocess` service of `harmonet up` publishes
it (at once while it runs, else at its next start) and writes the outcome to
`<data dir>/reprocess/done/<run id>.json`, which the command waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from receiver.manifest import build_manifest
from receiver.stability import ROUTING_KEY, StudyMeta, _digest, _meta_key, _published_key
from services.blobstore import FileBlobStore
from services.bus import Bus
from services.events import StudyReceived, make_event
from services.runner import Context, Service
from services.spool import spool as services_spool
from services.spool import write_json_atomically
from services.state import StateStore
from services.state.lock import state_lock

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0


# --- finding stored studies --------------------------------------------------------------


@dataclass(frozen=True)
class StoredStudy:
    site: str
    study_uid: str
    stored_at: float  # newest series directory change (seconds since the epoch)


def stored_studies(blobs: FileBlobStore) -> list[StoredStudy]:
    """Every study under `dicom/<site>/<study>/`, oldest first."""
    root = blobs.root / "dicom"
    found = []
    for site_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        for study_dir in (p for p in site_dir.iterdir() if p.is_dir()):
            series = [p.stat().st_mtime for p in study_dir.iterdir() if p.is_dir()]
            if series:
                found.append(StoredStudy(site_dir.name, study_dir.name, max(series)))
    return sorted(found, key=lambda s: (s.stored_at, s.study_uid))


def select_studies(
    stored: Iterable[StoredStudy], *, study_uids: Iterable[str] = (), since: date | None = None,
    site: str | None = None,
) -> list[StoredStudy]:
    wanted = set(study_uids)
    cutoff = None if since is None else datetime.combine(since, datetime.min.time(), UTC)
    chosen = []
    for study in stored:
        if site is not None and study.site != site:
            continue
        if study.study_uid in wanted or (
                cutoff is not None and study.stored_at >= cutoff.timestamp()):
            chosen.append(study)
    return chosen


# --- publishing a new revision -----------------------------------------------------------


@dataclass(frozen=True)
class Republished:
    study_uid: str
    revision: int
    event_id: str
    repeated: bool  # this run had published the revision before: same event id again


class JournalIndex:
    """The last `study.received` of each study in `events.jsonl` (read once, lazily)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[str, dict[str, Any]] | None = None

    def last(self, study_uid: str) -> dict[str, Any] | None:
        if self._last is None:
            self._last = {}
            lines = self.path.read_bytes().splitlines() if self.path.exists() else []
            for line in lines:
                if b'"org.harmonet.study.received"' not in line:
                    continue
                data = json.loads(line).get("data", {})
                previous = self._last.get(data.get("study_uid"))
                if previous is None or data.get("revision", 0) >= previous.get("revision", 0):
                    self._last[data["study_uid"]] = data
        return self._last.get(study_uid)


@dataclass(frozen=True)
class Reprocessor:
    state: StateStore
    blobs: FileBlobStore
    bus: Bus
    journal: JournalIndex
    source: str

    async def reprocess(self, study: StoredStudy, *, run_id: str) -> Republished:
        async with state_lock(self.state, f"lock:study:{study.study_uid}"):
            return await self._publish(study, run_id=run_id)

    async def _publish(self, study: StoredStudy, *, run_id: str) -> Republished:
        manifest = await asyncio.to_thread(
            build_manifest, self.blobs, study_uid=study.study_uid, site=study.site)
        if manifest is None:
            raise LookupError(f"study {study.study_uid} has no stored instances")
        meta, last_revision = await asyncio.to_thread(self._meta_and_revision, study)
        run_key = f"reprocess:{run_id}:{study.study_uid}"
        assigned = await asyncio.to_thread(self.state.get, run_key)
        revision = int(assigned) if assigned else last_revision + 1
        data = StudyReceived(
            study_uid=study.study_uid, revision=revision, site=study.site, scanner=meta.scanner,
            subject_id=meta.subject_id, is_phantom=meta.is_phantom, **manifest.model_dump(),
        )
        event = make_event(ROUTING_KEY, data, source=self.source, subject=study.study_uid,
                           id_parts=(study.study_uid, revision))
        # Recorded before publishing: a crash in between re-publishes the same revision.
        await asyncio.to_thread(self.state.set, run_key, str(revision).encode())
        await self.bus.publish(event)
        digest = _digest([k for s in manifest.series for k in s.blob_keys])
        await asyncio.to_thread(self.state.hset, _published_key(study.study_uid), {
            "revision": str(max(revision, last_revision)).encode(), "digest": digest.encode()})
        log.info("study re-published", extra={"study_uid": study.study_uid,
                                              "revision": revision, "run_id": run_id})
        return Republished(study.study_uid, revision, event.id, repeated=assigned is not None)

    def _meta_and_revision(self, study: StoredStudy) -> tuple[StudyMeta, int]:
        raw = self.state.hgetall(_meta_key(study.study_uid))
        published = self.state.hgetall(_published_key(study.study_uid))
        last = self.journal.last(study.study_uid)
        revision = max(int(published.get("revision", b"0")),
                       int(last.get("revision", 0)) if last else 0)
        if raw:
            return StudyMeta(site=raw["site"].decode(), scanner=raw["scanner"].decode(),
                             subject_id=raw["subject_id"].decode(),
                             is_phantom=raw.get("is_phantom") == b"1"), revision
        if last is not None:
            return StudyMeta(site=study.site, scanner=last["scanner"],
                             subject_id=last["subject_id"],
                             is_phantom=bool(last.get("is_phantom"))), revision
        raise LookupError(f"study {study.study_uid}: no record of its scanner (state store "
                          "or event journal); push or import it again instead")


async def run_request(reprocessor: Reprocessor, studies: list[StoredStudy], *, run_id: str
                      ) -> dict[str, Any]:
    published, errors = [], []
    for study in studies:
        try:
            published.append(asdict(await reprocessor.reprocess(study, run_id=run_id)))
        except Exception as exc:  # one study must not stop the run; it is reported
            log.exception("cannot re-publish study", extra={"study_uid": study.study_uid})
            errors.append({"study_uid": study.study_uid, "error": f"{type(exc).__name__}: {exc}"})
    return {"run_id": run_id, "published": published, "errors": errors}


# --- the request spool of `harmonet up` ------------------------------------------------


def spool(data_dir: Path) -> tuple[Path, Path]:
    return services_spool(data_dir, "reprocess")


async def serve_requests(context: Context, *, once: bool = False) -> None:
    requests, done = spool(context.settings.data_dir)
    reprocessor = _reprocessor(context)
    while True:
        for request in sorted(requests.glob("*.json")) if requests.exists() else []:
            payload = json.loads(request.read_text())
            run_id = str(payload["run_id"])
            result_path = done / f"{run_id}.json"
            if not result_path.exists():  # a run already done is not run twice
                studies = [StoredStudy(**s) for s in payload["studies"]]
                result = await run_request(reprocessor, studies, run_id=run_id)
                write_json_atomically(result_path, result)
            request.unlink()
        if once:
            return
        await asyncio.sleep(POLL_SECONDS)


def _reprocessor(context: Context) -> Reprocessor:
    journal = JournalIndex(context.settings.data_dir / "events" / "events.jsonl")
    return Reprocessor(state=context.state, blobs=context.blobs, bus=context.bus,
                       journal=journal, source=f"harmonet/reprocess/{socket.gethostname()}")


async def run(context: Context) -> None:
    await serve_requests(context)


service = Service(name="reprocess", run=run)


# --- the command -------------------------------------------------------------------------


def register(verbs: Any, service_parsers: dict[str, argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "reprocess", help="re-publish stored studies through the pipeline as new revisions")
    parser.add_argument("--study", action="append", default=[], metavar="UID",
                        help="pseudonymised StudyInstanceUID (repeatable)")
    parser.add_argument("--since", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="every study stored on or after this day (UTC)")
    parser.add_argument("--site", help="only studies of this site")
    parser.add_argument("--run-id", help="retry an earlier run: same revisions, same event ids")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="embedded mode: seconds to wait for `harmonet up` to publish")
    parser.add_argument("--dry-run", action="store_true", help="list the studies, publish nothing")
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    from services.cli import settings_and_config
    from services.config import ConfigError
    from services.runner import build_context

    if not args.study and args.since is None:
        print("name studies with --study UID or --since YYYY-MM-DD", file=sys.stderr)
        return 2
    try:
        settings, config = settings_and_config()
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    blobs = FileBlobStore(settings.data_dir)
    studies = select_studies(stored_studies(blobs), study_uids=args.study, since=args.since,
                             site=args.site)
    missing = set(args.study) - {s.study_uid for s in studies}
    if missing:
        print(f"not in the blob store: {', '.join(sorted(missing))}", file=sys.stderr)
    if args.dry_run or not studies:
        for study in studies:
            print(f"{study.site}\t{study.study_uid}")
        print(f"{len(studies)} studies selected", file=sys.stderr)
        return 0 if studies or not missing else 1
    run_id = args.run_id or _new_run_id()
    if settings.amqp_url is None:
        return _through_spool(settings.data_dir, studies, run_id=run_id, wait=args.wait)
    context = build_context(settings, config, bus_name="reprocess")
    result = asyncio.run(_publish_directly(context, studies, run_id=run_id))
    return _report(result)


def _new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


async def _publish_directly(context: Context, studies: list[StoredStudy], *, run_id: str
                            ) -> dict[str, Any]:
    await context.bus.connect()
    try:
        return await run_request(_reprocessor(context), studies, run_id=run_id)
    finally:
        await context.bus.close()
        context.state.close()


def _through_spool(data_dir: Path, studies: list[StoredStudy], *, run_id: str, wait: float
                   ) -> int:
    requests, done = spool(data_dir)
    result_path = done / f"{run_id}.json"
    if not result_path.exists():
        write_json_atomically(requests / f"{run_id}.json", {
            "run_id": run_id, "studies": [asdict(s) for s in studies]})
    deadline = time.monotonic() + wait
    while not result_path.exists():
        if time.monotonic() > deadline:
            print(f"run {run_id}: {len(studies)} studies queued in {requests}; `harmonet up` "
                  "publishes them when it runs (see the result in "
                  f"{result_path})", file=sys.stderr)
            return 0
        time.sleep(0.2)
    return _report(json.loads(result_path.read_text()))


def _report(result: dict[str, Any]) -> int:
    for item in result["published"]:
        again = " (already published by this run: same event id)" if item["repeated"] else ""
        print(f"{item['study_uid']}\trevision {item['revision']}{again}")
    for error in result["errors"]:
        print(f"{error['study_uid']}\tFAILED: {error['error']}", file=sys.stderr)
    print(f"run {result['run_id']}: {len(result['published'])} studies re-published, "
          f"{len(result['errors'])} failed", file=sys.stderr)
    return 1 if result["errors"] else 0
