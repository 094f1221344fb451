"""storescu → `harmonet receiver` → `harmonet compliance` on the real RabbitMQ and Redis:
`study.compliance.checked` arrives with the right verdicts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.events import CloudEvent, StudyComplianceChecked
from services.synthetic import BOLD_EPI, T1_MPRAGE, SeriesSpec, StudySpec, write_study
from tests.integration.test_receiver_rabbitmq_redis import _bind_subscriber, _env
from tests.support.processes import require_tool, run_harmonet, storescu

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CONFIG = """\
study: TEST
sites:
  - id: milan
    scanners:
      - id: milan-prisma
        ae_titles: [MILANPRISMA]
protocols:
  - id: core
    series:
      - type: t1w
        match: {series_description: "(?i)t1|mprage"}
        severity: exclude
        expect:
          RepetitionTime: {value: 2300, tolerance: "1%"}
          EchoTime: {value: 2.98, tolerance: 0.1}
          FlipAngle: {value: 9, tolerance: 1}
          PixelSpacing: {value: [1.0, 1.0], tolerance: 0.01}
      - type: bold
        match: {series_description: "(?i)bold"}
        severity: warning
        expect:
          RepetitionTime: {value: 2000, tolerance: "1%"}
          FlipAngle: {value: 77, tolerance: 2}
"""


def _study() -> StudySpec:
    t1 = SeriesSpec(**{**T1_MPRAGE.__dict__, "slices": 12, "rows": 64, "columns": 64})
    bold = SeriesSpec(**{**BOLD_EPI.__dict__, "slices": 6, "volumes": 3})
    localizer = SeriesSpec(
        description="AAHead_Scout",
        protocol_name="AAHead_Scout",
        sequence_name="*fl2d1",
        slices=3,
        repetition_time_ms=8.6,
        echo_time_ms=4.0,
        flip_angle_deg=20.0,
    )
    return StudySpec(seed="compliance-e2e", series=(t1, bold, localizer))


async def test_study_compliance_checked_on_rabbitmq(
    tmp_path: Path, rabbitmq_url: str, redis_url: str, redis_prefix: str
) -> None:
    require_tool("storescu")
    write_study(_study(), tmp_path / "study")
    config = tmp_path / "harmonet.yaml"
    config.write_text(CONFIG)
    env = _env(rabbitmq_url, redis_url, redis_prefix, HARMONET_CONFIG=str(config))
    connection, queue = await _bind_subscriber(rabbitmq_url, pattern="study.compliance.checked")
    try:
        with (
            run_harmonet("compliance", tmp_path / "data", env=env) as compliance,
            run_harmonet("receiver", tmp_path / "data", env=env) as receiver,
        ):
            pushed = await asyncio.to_thread(
                storescu, receiver.dicom_port, tmp_path / "study", calling_ae="MILANPRISMA"
            )
            assert pushed.returncode == 0, pushed.stderr
            async with asyncio.timeout(60):
                message = await queue.iterator().__anext__()
            await message.ack()
            series_total = "harmonet_compliance_series_total"
            for verdict in ("compliant", "deviant", "unrecognized"):
                labels = {"site": "milan", "scanner": "milan-prisma", "result": verdict}
                counted = await asyncio.to_thread(compliance.wait_metric, series_total, 1, **labels)
                assert counted == 1
    finally:
        await connection.close()
    event = CloudEvent.from_json(message.body)
    assert event.type == "org.harmonet.study.compliance.checked"
    checked = event.parsed_data()
    assert isinstance(checked, StudyComplianceChecked)
    by_number = {s.series_number: s for s in checked.series}
    t1, bold, scout = by_number[1], by_number[2], by_number[3]
    assert (t1.series_type, t1.verdict, t1.deviations) == ("t1w", "compliant", [])
    assert (bold.series_type, bold.verdict, bold.severity) == ("bold", "deviant", "warning")
    [flip] = bold.deviations
    assert (flip.parameter, flip.expected, flip.actual) == ("FlipAngle", 77, 90.0)
    assert (scout.series_type, scout.verdict) == ("unrecognized", "unrecognized")
    assert t1.fingerprint["RepetitionTime"] == 2300.0
