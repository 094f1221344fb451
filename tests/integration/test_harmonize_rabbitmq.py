"""`harmonet harmonize install` then `harmonet harmonize` on the real RabbitMQ and Redis:
QC events in, `study.harmonized` out; a new site is pending, then added to the model in Redis
and its studies published as harmonized with the new model version."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import numpy as np
import pytest

from harmonize_service.combat import apply, fit
from harmonize_service.model import to_json
from services.bus import make_bus
from services.events import StudyHarmonized, make_event
from tests.integration.test_receiver_rabbitmq_redis import _bind_subscriber, _env
from tests.support.processes import HarmonetProcess, run_harmonet
from tests.unit.harmonize.factories import HARMONIZE_FEATURES, site_table, study_events

pytestmark = [pytest.mark.integration]

NAMES = tuple(f"t1w.{f}" for f in HARMONIZE_FEATURES)


def _wait_for_log(service: HarmonetProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in service.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text} not logged within {timeout}s")
        time.sleep(0.1)


async def _collect(queue: aio_pika.abc.AbstractQueue, count: int) -> list[StudyHarmonized]:
    found: list[StudyHarmonized] = []
    async with asyncio.timeout(60):
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                found.append(StudyHarmonized.model_validate(json.loads(message.body)["data"]))
                if len(found) == count:
                    return found
    return found


async def test_harmonize_service_on_rabbitmq_and_redis(
    tmp_path: Path, rabbitmq_url: str, redis_url: str, redis_prefix: str
) -> None:
    table = site_table(seed=21, n_features=len(HARMONIZE_FEATURES),
                       scans_per_site={"milan": 25, "oslo": 25, "porto": 3})
    known = [i for i, s in enumerate(table.site) if s != "porto"]
    ages = [float(round(table.age[i])) for i in range(len(table.site))]
    model = fit(table.features[known], [table.site[i] for i in known],
                {"age": [ages[i] for i in known], "sex": [table.sex[i] for i in known]},
                categorical={"sex"}, feature_names=NAMES, batch_column="site")
    model_path = tmp_path / "model.json"
    model_path.write_text(to_json(model))
    data_dir = tmp_path / "data"
    env = _env(rabbitmq_url, redis_url, redis_prefix, HARMONET_HARMONIZE_MIN_SITE_SCANS="3")
    installed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "harmonize", "install", str(model_path)],
        env={**os.environ, **env, "HARMONET_DATA_DIR": str(data_dir)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert installed.returncode == 0, installed.stderr
    version = installed.stdout.strip().rsplit(" ", 1)[-1]

    connection, queue = await _bind_subscriber(rabbitmq_url, "study.harmonized")
    bus = make_bus(amqp_url=rabbitmq_url, max_attempts=3, prefetch=4, name="test")
    await bus.connect()
    try:
        with run_harmonet("harmonize", data_dir, env=env) as service:
            # events published before the service declared its queue would be unroutable
            await asyncio.to_thread(_wait_for_log, service, '"subscribed"')
            porto = [i for i, s in enumerate(table.site) if s == "porto"]
            for i in [0, *porto]:
                received, completed = study_events(table, i)
                for key, data in (("study.received", received),
                                  ("study.qc.completed", completed)):
                    await bus.publish(make_event(key, data, source="test",
                                                 subject=completed.study_uid,
                                                 id_parts=(completed.study_uid, key)))
            events = await _collect(queue, 1 + 2 + 3)
    finally:
        await bus.close()
        await connection.close()

    # deliveries are handled concurrently (prefetch), so only the facts are compared
    facts = {(e.study_uid, e.status): e for e in events}
    assert len(facts) == 6
    first = facts[("1.2.826.0.0", "harmonized")]
    assert (first.model_version, first.batch) == (version, "milan")
    expected = apply(model, table.features[:1], ["milan"],
                     {"age": [ages[0]], "sex": [table.sex[0]]})[0]
    assert [first.features[n] for n in NAMES] == list(expected)
    pending = [e for e in events if e.status == "pending"]
    added = [e for e in events if e.status == "harmonized" and e.batch == "porto"]
    assert len(pending) == 2 and {e.batch for e in pending} == {"porto"}
    assert {e.study_uid for e in added} == {f"1.2.826.0.{i}" for i in porto}
    new_version = added[0].model_version
    assert new_version != version and {e.model_version for e in added} == {new_version}
    stored = data_dir / "models" / "harmonize" / f"{new_version.replace(':', '-')}.json"
    assert stored.is_file()
    assert np.isfinite([v for e in added for v in e.features.values()]).all()
