"""Filesystem blob store: write-once keys, atomic and durable.

A write goes to an unnamed file in the target directory (Linux `O_TMPFILE`; a
`.tmp-` file elsewhere), is fdatasynced, then hard-linked to its final name
(which fails if the name exists, so a key is never overwritten, even by a racing
process), and the directory is fsynced. Only after `put_new` returns is the blob
durable. Threads linking into one directory share its fsync (group commit).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

# Errors from open(O_TMPFILE) that mean "not supported here", not "cannot write".
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_HAS_PROC_FD = os.path.isdir("/proc/self/fd")
_KNOWN_DIRECTORIES_MAX = 4096


class BlobStoreError(Exception):
    """The blob could not be stored durably (disk full, read-only, I/O error)."""


class PutResult(Enum):
    STORED = "stored"        # new key written
    DUPLICATE = "duplicate"  # key existed with identical content: nothing written
    CONFLICT = "conflict"    # key existed with different content: nothing written


class _DirectorySyncer:
    """fsync a directory once for every link made in it before the fsync started.

    A thread that needs its new entry durable takes a ticket; one thread at a
    time fsyncs the directory and covers every ticket issued before it began, so
    N associations writing into one series directory pay ~1 fsync, not N.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._issued: dict[str, int] = {}
        self._synced: dict[str, int] = {}
        self._busy: set[str] = set()

    def sync(self, directory: str) -> None:
        with self._cond:
            ticket = self._issued[directory] = self._issued.get(directory, 0) + 1
            while self._synced.get(directory, 0) < ticket:
                if directory in self._busy:
                    self._cond.wait()
                    continue
                self._busy.add(directory)
                covered = self._issued[directory]
                self._cond.release()
                try:
                    _fsync_dir(directory)
                finally:
                    self._cond.acquire()
                    self._busy.discard(directory)
                    self._cond.notify_all()
                self._synced[directory] = max(self._synced.get(directory, 0), covered)
            if len(self._issued) > _KNOWN_DIRECTORIES_MAX and not self._busy:
                # Forgetting is safe: a waiter that finds no record fsyncs again itself.
                self._issued.clear()
                self._synced.clear()


@dataclass(frozen=True)
class FileBlobStore:
    root: Path
    _known_directories: set[str] = field(
        init=False, repr=False, compare=False, default_factory=set
    )
    _syncer: _DirectorySyncer = field(
        init=False, repr=False, compare=False, default_factory=_DirectorySyncer
    )

    def path(self, key: str) -> Path:
        return self.root / _checked(key)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def put_new(self, key: str, data: bytes) -> PutResult:
        """Store `data` under `key` unless the key exists; never overwrites."""
        final = os.path.join(self.root, _checked(key))
        directory = os.path.dirname(final)
        try:
            self._ensure_directory(directory)
            try:
                linked = _link_new(directory, final, data)
            except FileNotFoundError:  # the directory went away since we cached it
                self._known_directories.discard(directory)
                self._ensure_directory(directory)
                linked = _link_new(directory, final, data)
            if not linked:
                return PutResult.DUPLICATE if _same_content(final, data) else PutResult.CONFLICT
            self._syncer.sync(directory)
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

    def _ensure_directory(self, directory: str) -> None:
        # A directory seen once stays (nothing here deletes directories), so each
        # series directory costs one stat per process, not one per instance.
        if directory in self._known_directories:
            return
        _makedirs_synced(directory)
        if len(self._known_directories) >= _KNOWN_DIRECTORIES_MAX:
            self._known_directories.clear()
        self._known_directories.add(directory)


def _checked(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _link_new(directory: str, final: str, data: bytes) -> bool:
    """Write `data` durably and link it as `final`; False when `final` exists."""
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _open_unnamed(directory_fd)
        if fd is None:
            return _link_named(directory, final, data)
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
            # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the O_TMPFILE inode
            # (open(2)); a dir fd makes Python call linkat rather than link.
            os.link(f"/proc/self/fd/{fd}", os.path.basename(final),
                    dst_dir_fd=directory_fd, follow_symlinks=True)
            return True
        except FileExistsError:
            return False
        finally:
            os.close(fd)
    finally:
        os.close(directory_fd)


def _link_named(directory: str, final: str, data: bytes) -> bool:
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _open_unnamed(directory_fd: int) -> int | None:
    if not _O_TMPFILE or not _HAS_PROC_FD:
        return None
    try:
        return os.open(".", os.O_WRONLY | _O_TMPFILE, 0o640, dir_fd=directory_fd)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _makedirs_synced(directory: str) -> None:
    """mkdir -p, fsyncing the parent of every directory it creates (new entries are durable)."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    _makedirs_synced(parent)
    try:
        os.mkdir(directory)
    except FileExistsError:
        return
    _fsync_dir(parent)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_content(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return os.fstat(handle.fileno()).st_size == len(data) and handle.read() == data
    except FileNotFoundError:
        return False
