"""The embedded state store's journal: what `harmonet up` keeps across a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from services.settings import Settings
from services.state import StateError, make_state
from services.state.file import FileStateStore


def _fill(store: FileStateStore) -> None:
    store.set("plain", b"\x00bytes\xff")
    store.set("short", b"gone", ttl_seconds=0.2)
    store.set("long", b"kept", ttl_seconds=600)
    store.incr("counter", 5)
    store.incr("counter", -2)
    store.hset("study:1", {"revision": b"3", "digest": b"abc"})
    store.hset("study:1", {"revision": b"4"})
    store.zadd("pending", "1.2.3", 10.0)
    store.zadd("pending", "1.2.4", 20.0)
    store.zadd("pending", "1.2.3", 15.0)
    assert store.zrem_if_score("pending", "1.2.4", 20.0)
    store.set("lock", b"me")
    assert store.delete_if_equal("lock", b"me")


def _check(store: FileStateStore) -> None:
    assert store.get("plain") == b"\x00bytes\xff"
    assert store.get("short") is None
    assert store.get("long") == b"kept"
    assert store.get("counter") == b"3"
    assert store.hgetall("study:1") == {"revision": b"4", "digest": b"abc"}
    assert store.zrange_by_score("pending", 100) == ["1.2.3"]
    assert store.zscore("pending", "1.2.3") == 15.0
    assert store.get("lock") is None


def test_every_kind_of_write_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    store = FileStateStore(path)
    _fill(store)
    store.close()  # a SIGKILL does not close: see the next test
    time.sleep(0.25)
    again = FileStateStore(path)
    _check(again)
    again.close()


def test_a_torn_last_line_is_dropped_and_the_rest_replayed(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    store = FileStateStore(path)
    _fill(store)
    store.close()
    with path.open("ab") as journal:
        journal.write(b'{"op":"set","k":"half')  # the process died mid-write
    time.sleep(0.25)
    again = FileStateStore(path)
    _check(again)
    assert again.get("half") is None
    again.close()


def test_corruption_before_the_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    path.write_text('{"op":"set","k":"a","v":"YQ==","at":null}\nnot json\n'
                    '{"op":"set","k":"b","v":"Yg==","at":null}\n')
    with pytest.raises(StateError, match="line 2 is corrupt"):
        FileStateStore(path)


def test_compaction_keeps_the_live_keys_and_bounds_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    store = FileStateStore(path, compact_after=100)
    for index in range(1000):
        store.set("hot", str(index).encode())
        store.zadd("pending", f"s{index % 3}", float(index))
    lines = path.read_text().count("\n")
    store.close()
    assert lines <= 100 + 4  # one snapshot of 4 live records plus at most 100 writes
    again = FileStateStore(path)
    assert again.get("hot") == b"999"
    assert again.zrange_by_score("pending", 1e9) == ["s1", "s2", "s0"]
    again.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    first = FileStateStore(path)
    with pytest.raises(StateError, match="in use by another process"):
        FileStateStore(path)
    first.close()
    FileStateStore(path).close()


def test_journal_order_is_the_order_writes_took_effect(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    store = FileStateStore(path)
    barrier = threading.Barrier(8)

    def writer(index: int) -> None:
        barrier.wait()
        for round_ in range(200):
            store.set("contended", f"{index}:{round_}".encode())
            store.incr("writes")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = store.get("contended")
    store.close()
    again = FileStateStore(path)
    assert again.get("contended") == final
    assert again.get("writes") == b"1600"
    again.close()


def test_harmonet_up_settings_choose_the_journalled_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = make_state(redis_url=None, path=settings.embedded_state_path)
    assert isinstance(store, FileStateStore)
    assert settings.embedded_state_path == tmp_path / "state" / "state.jsonl"
    store.close()
