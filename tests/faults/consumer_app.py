"""A stand-in consumer service for the crash and poison tests, run as its own process:

    python -m tests.faults.consumer_app URL QUEUE OUT_DIR METRICS_PORT [--max-attempts N]

It consumes `study.#` from QUEUE through `RabbitMQBus` (the adapter every service uses)
and appends one JSON line per handler call to OUT_DIR/calls.jsonl. What the handler does
is named by the event's `data.kind`:

* `good`: records `processed`.
* `crash`: the first time (no OUT_DIR/crashed-<id> marker) records `started`, then the
  process SIGKILLs itself mid-message; after that it is processed like `good`.
* `poison`: raises `RetryableError` on every delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

from services.bus import Delivery, RetryableError
from services.bus.rabbitmq import RabbitMQBus
from services.log import configure_logging
from services.metrics import serve_metrics


def _record(out: Path, delivery: Delivery, outcome: str) -> None:
    line = json.dumps({"id": delivery.event.id, "attempt": delivery.attempt,
                       "outcome": outcome, "t": time.time()})
    with (out / "calls.jsonl").open("a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("out", type=Path)
    parser.add_argument("metrics_port", type=int)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=1)
    args = parser.parse_args()
    configure_logging("INFO")
    serve_metrics(args.metrics_port, host="127.0.0.1")
    out: Path = args.out

    async def handle(delivery: Delivery) -> None:
        data = delivery.event.data if isinstance(delivery.event.data, dict) else {}
        kind = data.get("kind")
        if kind == "poison":
            _record(out, delivery, "failed")
            raise RetryableError("poison: this message can never be handled")
        marker = out / f"crashed-{delivery.event.id}"
        if kind == "crash" and not marker.exists():
            marker.touch()
            _record(out, delivery, "started")
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding the unacked message
        await asyncio.sleep(0.01)
        _record(out, delivery, "processed")

    bus = RabbitMQBus(args.url, max_attempts=args.max_attempts, prefetch=args.prefetch,
                      connection_name="harmonet-faults-consumer", retry_delay_seconds=0.3)
    await bus.subscribe(args.queue, ["study.#"], handle)
    (out / "ready").touch()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
