"""RabbitMQ stopped and restarted while studies flow through the receiver, compliance, QC,
harmonization and the registry (separate processes, as deployed, the registry on
PostgreSQL): every study's events arrive, no logical event is duplicated (one event id per
study, revision and type), every service reconnects by itself, and the registry's own rows
hold each study revision once (`registry_rows.py`: one revision row, one compliance and QC
row per series, one harmonization row, one `study.processed`). The broker is a private node
(`tests/support/rabbitmq_node.py`), never the shared one. A recorder on its own durable
queue (the `RabbitMQBus` adapter, like every service) sees every event, `study.processed`
included."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from receiver.pseudonymise import Pseudonymiser
from services.bus import Delivery
from services.bus.rabbitmq import RabbitMQBus
from services.events import CloudEvent
from services.synthetic import small_study, write_study
from tests.conftest import unique_name
from tests.faults.kill_scenario import DOWNSTREAM, PSEUDONYM_KEY, storescu_command
from tests.faults.registry_rows import (
    dumps,
    expected_revisions,
    registry_figures,
    registry_violations,
    wait_for_registry,
)
from tests.support.processes import HarmonetProcess, require_tool, run_harmonet
from tests.support.rabbitmq_node import private_rabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]
STUDIES = 6
OUTAGE_SECONDS = 5.0
STAGES = (*DOWNSTREAM, "study.harmonized", "study.processed")
SERVICES = ("registry", "harmonize", "compliance", "qc", "receiver")  # consumers first


def _push_all(port: int, studies: list[Path], pushed: list[float], outage: threading.Event,
              errors: list[str]) -> None:
    for number, study in enumerate(studies):
        if number == 2:
            outage.set()  # two studies in flight: take the broker down now
        done = subprocess.run(storescu_command(port, study), capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            errors.append(done.stdout[-2000:] + done.stderr[-2000:])
        pushed.append(time.monotonic())
        time.sleep(1.0)


def logical_duplicates(
    events: list[CloudEvent],
) -> tuple[dict[str, Counter[str]], int, int]:
    """Per routing key, the studies seen; events sharing a (type, study, revision) but not an
    id (a logical duplicate: 0 is the guarantee); and redelivered copies (same id; a
    consumer drops them by id, as the registry does). The registry's rows are checked
    apart (`registry_rows`)."""
    seen: dict[str, Counter[str]] = {}
    different_ids, copies = 0, 0
    for routing_key in STAGES:
        of_key = [e for e in events if e.routing_key == routing_key]
        ids_per_fact: dict[tuple[str, int], set[str]] = {}
        for event in of_key:
            data = event.data if isinstance(event.data, dict) else {}
            ids_per_fact.setdefault((event.subject, int(data.get("revision", 0))), set()).add(
                event.id)
        seen[routing_key] = Counter(e.subject for e in of_key)
        different_ids += sum(len(ids) - 1 for ids in ids_per_fact.values())
        copies += len(of_key) - sum(len(ids) for ids in ids_per_fact.values())
    return seen, different_ids, copies


@pytest.mark.timeout(420)
async def test_broker_restart_while_studies_flow_loses_and_duplicates_nothing(
    tmp_path: Path, redis_url: str, redis_prefix: str, own_postgres_url: str
) -> None:
    require_tool("storescu")
    studies, expected = [], set()
    pseudonyms = Pseudonymiser(key=PSEUDONYM_KEY.encode())
    for number in range(STUDIES):
        spec = small_study(f"faults-broker-{number}", t1_slices=8, epi_slices=4, epi_volumes=3)
        write_study(spec, tmp_path / f"study-{number}")
        studies.append(tmp_path / f"study-{number}")
        expected.add(pseudonyms.uid(spec.uid("study")))
    data_dir = tmp_path / "data"
    recorded: list[CloudEvent] = []

    async def record(delivery: Delivery) -> None:
        recorded.append(delivery.event)

    with private_rabbitmq(tmp_path / "rabbitmq") as broker, contextlib.ExitStack() as stack:
        recorder = RabbitMQBus(broker.url, connection_name="harmonet-faults-recorder")
        await recorder.subscribe("faults-recorder", ["#"], record)
        env = {
            "HARMONET_AMQP_URL": broker.url,
            "HARMONET_REDIS_URL": redis_url,
            "HARMONET_STATE_PREFIX": redis_prefix + unique_name("broker-") + ":",
            "HARMONET_PSEUDONYM_KEY": PSEUDONYM_KEY,
            "HARMONET_DATABASE_URL": own_postgres_url,
        }
        try:
            services: dict[str, HarmonetProcess] = {
                verb: stack.enter_context(run_harmonet(verb, data_dir, env=env))
                for verb in SERVICES
            }
            await asyncio.to_thread(_wait_ready, services["registry"])
            pushed: list[float] = []
            errors: list[str] = []
            outage = threading.Event()
            pusher = threading.Thread(target=_push_all, args=(
                services["receiver"].dicom_port, studies, pushed, outage, errors))
            pusher.start()
            assert await asyncio.to_thread(outage.wait, 120)
            stopped_in = await asyncio.to_thread(broker.stop)
            await asyncio.sleep(OUTAGE_SECONDS)
            restarted_in = await asyncio.to_thread(broker.start)
            await asyncio.to_thread(pusher.join, 180)
            assert not errors, errors  # the receiver never needed the broker to store
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                seen, _, _ = logical_duplicates(recorded)
                if all(set(seen[key]) >= expected for key in STAGES):
                    break
                await asyncio.sleep(1)
            await asyncio.sleep(3)  # let redeliveries, if any, land
            seen, different_ids, copies = logical_duplicates(recorded)
            published = expected_revisions(recorded)
            rows = await asyncio.to_thread(wait_for_registry, own_postgres_url, published,
                                           timeout=60)
            alive = {verb: s.proc.poll() is None for verb, s in services.items()}
            # The outage was real to every service: its connection dropped and it retried.
            retried = {verb: s.log().count("Reconnecting after") for verb, s in services.items()}
        finally:
            await recorder.close()
    missing = {key: sorted(expected - set(seen[key])) for key in STAGES}
    violations = registry_violations(rows, published)
    figures = registry_figures(rows)
    processed: dict[tuple[str, int], set[str]] = {}
    for event in (e for e in recorded if e.routing_key == STAGES[-1]):
        revision = int(event.data.get("revision", 0)) if isinstance(event.data, dict) else 0
        processed.setdefault((event.subject, revision), set()).add(event.id)
    print(f"RabbitMQ outage: studies {STUDIES}, broker stopped in {stopped_in:.1f}s, down "
          f"{OUTAGE_SECONDS:.0f}s, restarted in {restarted_in:.1f}s; events per type "
          f"{ {k: sum(v.values()) for k, v in seen.items()} }, lost "
          f"{sum(len(m) for m in missing.values())}, logical duplicates {different_ids}, "
          f"redelivered copies (same id) {copies}, reconnect attempts {retried}, services "
          f"alive {sum(alive.values())}/{len(SERVICES)}; registry (PostgreSQL): study "
          f"revisions {figures['revisions']} of {len(published)} published, compliance rows "
          f"{figures['compliance_rows']}, QC rows {figures['qc_rows']}, harmonization rows "
          f"{figures['harmonized_rows']}, study.processed in the outbox "
          f"{figures['processed_events']}, rows per revision (per series) at most "
          f"{figures['max_rows_per_fact']}, duplicates {figures['duplicate_rows']}, "
          f"violations {len(violations)}")
    assert all(retried.values()), retried
    assert all(not m for m in missing.values()), missing
    assert different_ids == 0
    assert all(alive.values()), alive
    assert {uid for uid, _ in published} == expected
    assert violations == [], (violations, dumps(rows))
    # study.processed: once per revision in the outbox (above), and on the bus one id per
    # published revision
    assert set(processed) == set(published), processed
    assert all(len(ids) == 1 for ids in processed.values()), processed


def _wait_ready(registry: HarmonetProcess, timeout: float = 60) -> None:
    """Until the registry has migrated its database and consumes (its queue exists)."""
    deadline = time.monotonic() + timeout
    while "registry ready" not in registry.log():
        assert time.monotonic() < deadline, registry.log()[-3000:]
        time.sleep(0.2)
