"""Filesystem blob store: write-once keys, atomic and durable.

A write goes to a temporary file in the target directory, is fsynced, then
hard-linked to its final name (which fails if the name exists, so a key is
never overwritten, even by a racing process), and the directory is fsynced.
Only after `put_new` returns is the blob durable.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class BlobStoreError(Exception):
    """The blob could not be stored durably (disk full, read-only, I/O error)."""


class PutResult(Enum):
    STORED = "stored"        # new key written
    DUPLICATE = "duplicate"  # key existed with identical content: nothing written
    CONFLICT = "conflict"    # key existed with different content: nothing written


@dataclass(frozen=True)
class FileBlobStore:
    root: Path

    def path(self, key: str) -> Path:
        return self.root / _checked(key)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def put_new(self, key: str, data: bytes) -> PutResult:
        """Store `data` under `key` unless the key exists; never overwrites."""
        final = self.path(key)
        try:
            _makedirs_synced(final.parent)
            tmp = final.parent / f".tmp-{secrets.token_hex(8)}"
            try:
                _write_synced(tmp, data)
                os.link(tmp, final)
            except FileExistsError:
                return PutResult.DUPLICATE if _same_content(final, data) else PutResult.CONFLICT
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(final.parent)
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, "EIO")
            raise BlobStoreError(f"cannot store {key}: {reason} {exc.strerror}") from exc
        return PutResult.STORED

    def put_unique(self, prefix: str, data: bytes, *, suffix: str = "") -> str:
        """Store `data` under a new key below `prefix` (for quarantine); returns the key."""
        while True:
            key = f"{prefix}/{secrets.token_hex(8)}{suffix}"
            if self.put_new(key, data) is PutResult.STORED:
                return key

    def list(self, prefix: str) -> Iterator[str]:
        """Every key below `prefix`, sorted; temporary files are never listed."""
        base = self.path(prefix)
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.startswith(".tmp-"):
                    yield str(Path(dirpath, name).relative_to(self.root))


def _checked(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_synced(directory: Path) -> None:
    """mkdir -p, fsyncing the parent of every directory it creates (new entries are durable)."""
    if directory.is_dir():
        return
    _makedirs_synced(directory.parent)
    try:
        directory.mkdir()
    except FileExistsError:
        return
    _fsync_dir(directory.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_content(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False
