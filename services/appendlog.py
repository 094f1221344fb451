"""What the two embedded journals of `harmonet up` share (the state store's,
`services/state/file.py`, and the bus's, `services/bus/journal.py`): one process at a time
(flock on `<journal>.lock`), replay of JSON lines with a torn last line dropped, and
compaction by an atomic rewrite."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class CorruptJournal(ValueError):
    """A line other than the last one is not JSON."""


def lock_exclusive(path: Path) -> int | None:
    """The fd holding the journal's lock (close it to release), or None when another
    process holds it. Creates the journal's folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    guard = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(guard)
        return None
    return guard


def records(path: Path) -> Iterator[dict[str, Any]]:
    """The journal's records in order; a torn last line (the write a crash cut) is dropped."""
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            if number >= len(lines) - 1:
                return
            raise CorruptJournal(f"{path} line {number} is corrupt") from None
        yield record


def rewrite(path: Path, new_records: Iterable[dict[str, Any]], *, old_fd: int = -1) -> int:
    """Replace the journal by `new_records` (temp file, fsync, rename, fsync dir); closes
    `old_fd` and returns an fd appending to the new journal."""
    tmp = path.with_name(path.name + ".compact")
    with tmp.open("wb") as out:
        for record in new_records:
            out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    if old_fd >= 0:
        os.close(old_fd)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
