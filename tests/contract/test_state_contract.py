"""One contract for every state adapter: the in-process store and Redis (session prefix)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from services.state import InMemoryStateStore, StateError, StateStore, make_state
from services.state.file import FileStateStore
from services.state.redis import RedisStateStore

StoreFactory = Callable[[str], StateStore]

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("redis", id="redis", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    stores: list[StateStore] = []
    if request.param == "memory":
        shared: dict[str, InMemoryStateStore] = {}

        def factory(prefix: str) -> StateStore:
            return shared.setdefault(prefix, InMemoryStateStore(prefix=prefix))
    elif request.param == "file":
        directory = request.getfixturevalue("tmp_path")
        journalled: dict[str, StateStore] = {}

        def factory(prefix: str) -> StateStore:
            if prefix not in journalled:
                journalled[prefix] = FileStateStore(directory / f"{len(journalled)}.jsonl",
                                                    prefix=prefix)
                stores.append(journalled[prefix])
            return journalled[prefix]
    else:
        url, session_prefix = (
            request.getfixturevalue("redis_url"),
            request.getfixturevalue("redis_prefix"),
        )

        def factory(prefix: str) -> StateStore:
            store = RedisStateStore(url, prefix=session_prefix + prefix)
            stores.append(store)
            return store

    yield factory
    for store in stores:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> StateStore:
    return store_factory(f"{uuid.uuid4().hex[:8]}:")


def run_threads(count: int, work: Callable[[], object]) -> list[object]:
    """Run `work` in `count` threads released together; return their results."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def worker(index: int) -> None:
        barrier.wait()
        results[index] = work()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_ping_and_close(store: StateStore) -> None:
    store.ping()


def test_get_set_delete(store: StateStore) -> None:
    assert store.get("missing") is None
    store.set("k", b"\x00\xffbinary")
    assert store.get("k") == b"\x00\xffbinary"
    store.set("k", b"second")
    assert store.get("k") == b"second"
    store.delete("k")
    assert store.get("k") is None
    store.delete("k")  # deleting a missing key is fine


def test_ttl_expires_and_plain_set_clears_it(store: StateStore) -> None:
    store.set("short", b"v", ttl_seconds=0.2)
    store.set("kept", b"v", ttl_seconds=0.2)
    store.set("kept", b"w")  # like Redis SET: a new value without TTL persists
    assert store.get("short") == b"v"
    time.sleep(0.35)
    assert store.get("short") is None
    assert store.get("kept") == b"w"


def test_ttl_must_be_positive(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.set("k", b"v", ttl_seconds=0)
    with pytest.raises(ValueError):
        store.set_if_absent("k", b"v", ttl_seconds=-1)


def test_set_if_absent_claims_once_until_expiry(store: StateStore) -> None:
    assert store.set_if_absent("lock", b"me", ttl_seconds=0.2)
    assert not store.set_if_absent("lock", b"you")
    assert store.get("lock") == b"me"
    time.sleep(0.35)
    assert store.set_if_absent("lock", b"you")
    assert store.get("lock") == b"you"


def test_set_if_absent_race_has_exactly_one_winner(store: StateStore) -> None:
    results = run_threads(20, lambda: store.set_if_absent("claim", uuid.uuid4().bytes))
    assert results.count(True) == 1 and results.count(False) == 19


def test_delete_if_equal_releases_only_your_lock(store: StateStore) -> None:
    assert not store.delete_if_equal("lock", b"me")
    store.set("lock", b"me")
    assert not store.delete_if_equal("lock", b"you")
    assert store.get("lock") == b"me"
    assert store.delete_if_equal("lock", b"me")
    assert store.get("lock") is None


def test_incr(store: StateStore) -> None:
    assert store.incr("n") == 1
    assert store.incr("n", 5) == 6
    assert store.incr("n", -10) == -4
    assert store.get("n") == b"-4"
    store.set("text", b"seven")
    with pytest.raises(StateError):
        store.incr("text")


def test_incr_is_atomic_under_threads(store: StateStore) -> None:
    def add_fifty() -> None:
        for _ in range(50):
            store.incr("counter")

    run_threads(20, add_fifty)
    assert store.incr("counter", 0) == 1000


def test_hash(store: StateStore) -> None:
    assert store.hgetall("h") == {}
    store.hset("h", {"a": b"1", "b": b"2"})
    store.hset("h", {"b": b"3", "c": b""})
    store.hset("h", {})
    assert store.hgetall("h") == {"a": b"1", "b": b"3", "c": b""}
    store.delete("h")
    assert store.hgetall("h") == {}


def test_wrong_type_raises_state_error(store: StateStore) -> None:
    store.hset("h", {"a": b"1"})
    with pytest.raises(StateError):
        store.get("h")
    with pytest.raises(StateError):
        store.zadd("h", "m", 1.0)


def test_sorted_set_scores(store: StateStore) -> None:
    assert store.zscore("z", "m") is None
    store.zadd("z", "m", 1.5)
    assert store.zscore("z", "m") == 1.5
    store.zadd("z", "m", 0.1 + 0.2)  # update keeps one member, exact float
    assert store.zscore("z", "m") == 0.1 + 0.2
    assert store.zrange_by_score("z", 10) == ["m"]


def test_zrange_by_score_orders_and_limits(store: StateStore) -> None:
    for member, score in [("c", 3.0), ("a", 1.0), ("b2", 2.0), ("b1", 2.0), ("late", 9.0)]:
        store.zadd("due", member, score)
    assert store.zrange_by_score("due", 3.0) == ["a", "b1", "b2", "c"]  # inclusive, ties by name
    assert store.zrange_by_score("due", 2.0, limit=2) == ["a", "b1"]
    assert store.zrange_by_score("due", 0.5) == []
    assert store.zrange_by_score("due", 100, limit=0) == []
    assert store.zrange_by_score("missing", 100) == []


def test_zrem_if_score_is_compare_and_delete(store: StateStore) -> None:
    store.zadd("due", "study", 0.1 + 0.2)
    assert not store.zrem_if_score("due", "study", 0.3)  # 0.1 + 0.2 != 0.3
    assert not store.zrem_if_score("due", "other", 0.1 + 0.2)
    store.zadd("due", "study", 42.0)  # rescheduled by someone else
    assert not store.zrem_if_score("due", "study", 0.1 + 0.2)
    assert store.zscore("due", "study") == 42.0
    assert store.zrem_if_score("due", "study", 42.0)
    assert store.zscore("due", "study") is None
    assert not store.zrem_if_score("due", "study", 42.0)


def test_zrem_if_score_race_has_exactly_one_winner(store: StateStore) -> None:
    store.zadd("due", "study", 7.0)
    results = run_threads(20, lambda: store.zrem_if_score("due", "study", 7.0))
    assert results.count(True) == 1


def test_prefixes_isolate_stores(store_factory: StoreFactory) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second = store_factory(f"{tag}-a:"), store_factory(f"{tag}-b:")
    first.set("k", b"first")
    assert second.get("k") is None
    second.set("k", b"second")
    first.zadd("z", "m", 1.0)
    assert second.zrange_by_score("z", 10) == []
    assert (first.get("k"), second.get("k")) == (b"first", b"second")


def test_make_state_without_url_is_in_process() -> None:
    assert isinstance(make_state(redis_url=None), InMemoryStateStore)


def test_unreachable_redis_raises_state_error_quickly() -> None:
    store = RedisStateStore("redis://127.0.0.1:1/0", prefix="unreachable:")
    started = time.monotonic()
    with pytest.raises(StateError):
        store.ping()
    with pytest.raises(StateError):
        store.get("k")
    assert time.monotonic() - started < 10
    store.close()


@pytest.mark.integration
def test_flush_prefix_deletes_only_its_own_keys(redis_url: str, redis_prefix: str) -> None:
    tag = uuid.uuid4().hex[:8]
    doomed = RedisStateStore(
        redis_url, prefix=f"{redis_prefix}{tag}*:"
    )  # unescaped, * would match x
    kept = RedisStateStore(redis_url, prefix=f"{redis_prefix}{tag}x:")
    for index in range(1200):
        doomed.set(f"k{index}", b"v")
    kept.set("k1", b"v")
    doomed.flush_prefix()
    assert doomed.get("k1") is None and doomed.get("k1199") is None
    assert kept.get("k1") == b"v"
    doomed.close()
    kept.close()
