"""A consumer that dies mid-message gets it again and handles it once; a poison message
is retried the configured number of times, then dead-lettered (visible in
`harmonet_events_consumed_total{result="dead_lettered"}` and in the DLQ) while the
messages behind it flow."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.bus.rabbitmq import RabbitMQBus
from services.events import CloudEvent, schema_url
from tests.support.processes import free_port

pytestmark = pytest.mark.integration
MAX_ATTEMPTS = 3


def _event(kind: str) -> CloudEvent:
    return CloudEvent(
        id=str(uuid.uuid4()), source="tests/faults", type="org.harmonet.study.received",
        time=datetime.now(UTC), subject="2.25.8", dataschema=schema_url("study.received"),
        data={"kind": kind},
    )


class Consumer:
    def __init__(self, url: str, queue: str, out: Path) -> None:
        self.url, self.queue, self.out = url, queue, out
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.out / "ready").unlink(missing_ok=True)
        with (self.out / "consumer.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.consumer_app", self.url, self.queue,
                 str(self.out), str(self.metrics_port), "--max-attempts", str(MAX_ATTEMPTS)],
                stdout=log, stderr=log)
        _until(lambda: (self.out / "ready").exists(), what="consumer ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def calls(self) -> list[dict[str, Any]]:
        path = self.out / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def metric(self, result: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("harmonet_events_consumed_total{")
                   and f'result="{result}"' in line and f'service="{self.queue}"' in line)


def _until(predicate: Any, *, what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        time.sleep(0.05)


@pytest.fixture
def consumer(rabbitmq_url: str, tmp_path: Path) -> Iterator[Consumer]:
    handle = Consumer(rabbitmq_url, f"faults-{uuid.uuid4().hex[:8]}", tmp_path)
    handle.start()
    yield handle
    handle.stop()


async def _publish(url: str, events: list[CloudEvent]) -> None:
    bus = RabbitMQBus(url, connection_name="harmonet-faults-publisher")
    try:
        for event in events:
            await bus.publish(event)
    finally:
        await bus.close()


def _processed(consumer: Consumer) -> list[str]:
    return [c["id"] for c in consumer.calls() if c["outcome"] == "processed"]


async def test_consumer_killed_mid_message_gets_it_again_and_handles_it_once(
    consumer: Consumer, rabbitmq_url: str
) -> None:
    crash, after = _event("crash"), [_event("good") for _ in range(3)]
    await _publish(rabbitmq_url, [crash, *after])
    assert consumer.proc is not None
    await asyncio.to_thread(consumer.proc.wait, 30)
    assert consumer.proc.returncode == -9  # SIGKILL, holding the unacked message
    assert _processed(consumer) == []  # prefetch 1: nothing behind it was taken either
    consumer.start()  # the orchestrator restarts the service
    wanted = [crash.id, *(e.id for e in after)]
    await asyncio.to_thread(_until, lambda: sorted(_processed(consumer)) == sorted(wanted),
                            what="redelivered messages handled")
    await asyncio.sleep(1)
    processed = _processed(consumer)
    calls = [c for c in consumer.calls() if c["id"] == crash.id]
    print(f"consumer crash: SIGKILL mid-message 1, redelivered 1, handled "
          f"{processed.count(crash.id)} time(s), messages behind it handled "
          f"{len(processed) - 1}/{len(after)}, duplicates {len(processed) - len(set(processed))}")
    assert sorted(processed) == sorted(wanted)  # each exactly once
    assert [c["outcome"] for c in calls] == ["started", "processed"]
    assert calls[1]["attempt"] == 1  # a crash is not a handler outcome: no attempt used up


async def test_poison_message_is_dead_lettered_after_the_attempts_without_blocking(
    consumer: Consumer, rabbitmq_url: str
) -> None:
    poison, behind = _event("poison"), [_event("good") for _ in range(5)]
    await _publish(rabbitmq_url, [poison, *behind])
    await asyncio.to_thread(_until, lambda: consumer.metric("dead_lettered") == 1,
                            what="poison dead-lettered")
    bus = RabbitMQBus(rabbitmq_url, connection_name="harmonet-faults-dlq")
    try:
        letters = await bus.dead_letters(consumer.queue)
    finally:
        await bus.close()
    calls = consumer.calls()
    poison_calls = [c for c in calls if c["id"] == poison.id]
    good_done = max(c["t"] for c in calls if c["outcome"] == "processed")
    print(f"poison: delivered {len(poison_calls)} times (max attempts {MAX_ATTEMPTS}), dead "
          f"letters {len(letters)}, metric dead_lettered {consumer.metric('dead_lettered'):.0f}, "
          f"retried {consumer.metric('retried'):.0f}; {len(_processed(consumer))}/{len(behind)} "
          f"messages behind it handled {poison_calls[-1]['t'] - good_done:.2f}s before it was "
          "dead-lettered")
    assert [c["attempt"] for c in poison_calls] == list(range(1, MAX_ATTEMPTS + 1))
    assert consumer.metric("retried") == MAX_ATTEMPTS - 1
    [letter] = letters
    assert letter.event is not None and letter.event.id == poison.id
    assert letter.attempts == MAX_ATTEMPTS and "gave up after 3 attempts" in letter.reason
    assert sorted(_processed(consumer)) == sorted(e.id for e in behind)
    assert good_done < poison_calls[-1]["t"]  # the queue kept flowing behind the poison
