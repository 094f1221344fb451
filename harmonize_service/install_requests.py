"""Making a model current while `harmonet up` runs.

`harmonet up` holds the embedded state file, so `harmonet harmonize install` (and
`intensity-install`) cannot set the current-model pointer itself. It stores the artefact in
the blob store (write-once, no state needed) and drops a request in
`<data dir>/harmonize/requests/`; the harmonize service of `harmonet up` checks the
artefact is there, makes it current and writes `<data dir>/harmonize/done/<id>.json`,
which the command waits for. With Redis the command sets the pointer itself.

Only the two model pointers can be set this way, each to an artefact already in the blob
store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harmonize_service import images, store
from services.blobstore import FileBlobStore
from services.spool import spool as services_spool
from services.spool import write_json_atomically
from services.state import StateStore
from services.state.lock import state_lock

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
# pointer -> (where its artefacts live, the lock its writers take)
POINTERS: dict[str, tuple[Callable[[str], str], str | None]] = {
    store.CURRENT_KEY: (store.model_key, store.MODEL_LOCK),
    images.CURRENT_KEY: (images.model_key, None),
}


def spool(data_dir: Path) -> tuple[Path, Path]:
    return services_spool(data_dir, "harmonize")


def request_install(data_dir: Path, *, pointer: str, version: str, what: str,
                    wait: float) -> int:
    """The command's side: queue the request, wait for `harmonet up` to carry it out."""
    requests, done = spool(data_dir)
    request_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    write_json_atomically(requests / f"{request_id}.json",
                          {"id": request_id, "pointer": pointer, "version": version})
    result_path = done / f"{request_id}.json"
    deadline = time.monotonic() + wait
    while not result_path.exists():
        if time.monotonic() > deadline:
            print(f"{what} {version} stored; `harmonet up` makes it current when it runs "
                  f"(request {requests / f'{request_id}.json'})", file=sys.stderr)
            return 0
        time.sleep(0.2)
    result = json.loads(result_path.read_text())
    if result.get("error"):
        print(f"{what}: {result['error']}", file=sys.stderr)
        return 1
    print(f"current {what}: {version} (made current by `harmonet up`)")
    return 0


async def serve(data_dir: Path, *, state: StateStore, blobs: FileBlobStore,
                once: bool = False) -> None:
    """The service's side: carry out each queued request, oldest first, once."""
    requests, done = spool(data_dir)
    while True:
        for path in sorted(requests.glob("*.json")) if requests.exists() else []:
            request = json.loads(path.read_text())
            result_path = done / f"{request['id']}.json"
            if not result_path.exists():
                result = await _carry_out(request, state=state, blobs=blobs)
                write_json_atomically(result_path, result)
            path.unlink(missing_ok=True)
        if once:
            return
        await asyncio.sleep(POLL_SECONDS)


async def _carry_out(request: dict[str, Any], *, state: StateStore,
                     blobs: FileBlobStore) -> dict[str, Any]:
    pointer, version = str(request.get("pointer")), str(request.get("version"))
    if pointer not in POINTERS:
        return {**request, "error": f"not a model pointer: {pointer!r}"}
    key_of, lock = POINTERS[pointer]
    if not await asyncio.to_thread(blobs.exists, key_of(version)):
        return {**request, "error": f"no artefact {key_of(version)} in the blob store"}
    if lock is None:
        await asyncio.to_thread(state.set, pointer, version.encode())
    else:
        async with state_lock(state, lock):
            await asyncio.to_thread(state.set, pointer, version.encode())
    log.info("model made current", extra={"pointer": pointer, "model_version": version})
    return {**request, "error": None}
