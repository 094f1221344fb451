"""Receiver SIGKILLed at random points of a 500-instance `storescu` push, restarted, the
push repeated: nothing acknowledged is lost, nothing stored is partial, the study is
published once and recorded once downstream. Many rounds: `benchmarks/faults.py`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.faults.kill_scenario import (
    acknowledged,
    expected_keys,
    kill_round,
    reference_run,
    summary,
    write_kill_study,
)
from tests.support.processes import require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROUNDS = 3
INSTANCES = 500


def test_storescu_verbose_output_is_parsed_into_acknowledged_files() -> None:
    output = "\n".join([
        "I: Sending file: /s/a.dcm", "I: Sending Store Request (MsgID 1, MR)",
        "I: Received Store Response (Success)",
        "I: Sending file: /s/b.dcm", "I: Received Store Response (Out of Resources)",
        "I: Sending file: /s/c.dcm", "E: Association Aborted",
    ])
    assert acknowledged(output) == [Path("/s/a.dcm")]


@pytest.mark.timeout(600)
def test_sigkill_during_push_loses_nothing_acknowledged(tmp_path: Path) -> None:
    require_tool("storescu")
    files = write_kill_study(tmp_path / "study", instances=INSTANCES)
    keys = expected_keys(files)
    reference = reference_run(tmp_path / "study", tmp_path / "reference")
    assert sorted(reference.digests) == sorted(keys.values())
    rng = random.Random(8)
    rounds = []
    for number in range(ROUNDS):
        result = kill_round(tmp_path / "study", tmp_path / f"round-{number}", reference=reference,
                            keys=keys, rng=rng)
        print(f"round {number}: killed after {result.kill_after_seconds:.2f}s, "
              f"acknowledged {result.acknowledged}, on disk {result.stored_at_kill}")
        rounds.append(result)
    print(summary(rounds, INSTANCES))
    for result in rounds:
        assert result.restart_error == ""
        assert result.lost == [] and result.differing == [] and result.leftovers == []
        assert result.final_missing == 0 and result.final_differing == 0
        assert result.ok, result.downstream
        assert result.stored_at_kill >= result.acknowledged
