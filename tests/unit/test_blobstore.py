import os
import threading
from pathlib import Path

import pytest

from services.blobstore import BlobStoreError, FileBlobStore, PutResult


def test_put_new_then_get(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    assert store.put_new("dicom/a/b/c.dcm", b"payload") is PutResult.STORED
    assert store.get("dicom/a/b/c.dcm") == b"payload"
    assert list(store.list("dicom")) == ["dicom/a/b/c.dcm"]
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_same_content_is_duplicate_and_different_is_conflict(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_new("k/x", b"one")
    assert store.put_new("k/x", b"one") is PutResult.DUPLICATE
    assert store.put_new("k/x", b"two") is PutResult.CONFLICT
    assert store.get("k/x") == b"one"  # never overwritten


def test_racing_writers_one_wins(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    results: list[PutResult] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        results.append(store.put_new("race/key", f"content-{i % 2}".encode()))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(PutResult.STORED) == 1
    winner = store.get("race/key")
    assert winner in (b"content-0", b"content-1")


def test_put_unique_never_collides(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    keys = {store.put_unique("quarantine/s", b"x", suffix=".dcm") for _ in range(20)}
    assert len(keys) == 20 and all(k.endswith(".dcm") for k in keys)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_invalid_keys_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        FileBlobStore(tmp_path).path(key)


def test_full_disk_raises_and_leaves_no_partial_file(tiny_disk: Path) -> None:
    store = FileBlobStore(tiny_disk)
    store.put_new("small", b"x" * 1000)
    with pytest.raises(BlobStoreError, match="ENOSPC"):
        store.put_new("big/blob", os.urandom(256 * 1024))
    assert not store.exists("big/blob")
    assert not [p for p in tiny_disk.rglob(".tmp-*")]
