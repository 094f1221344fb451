"""SIGKILL the receiver while `storescu` pushes a study, restart it, push again.

Shared by `tests/faults/test_receiver_sigkill.py` (a few rounds) and
`benchmarks/faults.py` (many). What a round checks, in the scanner's terms:

* every instance `storescu -v` saw a Success response for is on disk right after the
  kill, byte for byte what an uninterrupted reference run stored for the same file
  (pseudonymisation is deterministic under a fixed `HARMONET_PSEUDONYM_KEY`);
* nothing else on disk is partial: every stored file equals its reference, no
  `.tmp-*` file, nothing in `quarantine/`;
* after the restart and the repeated push, the study is complete and identical to
  the reference, and the journal holds exactly one `study.received` (revision 1)
  and one compliance and one QC event for it (`downstream_counts`).

Kill points are drawn inside the push: `harmonet up` keeps study state in process
memory, so a kill after the study was published is the deployment's case (Redis
state, RabbitMQ), covered by `test_rabbitmq_restart.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from receiver.pseudonymise import Pseudonymiser
from services.events import CloudEvent
from services.synthetic import small_study, write_study
from tests.support.fakes import journal_events, wait_for_journal
from tests.support.processes import HarmonetProcess, require_tool, run_harmonet

PSEUDONYM_KEY = "fault-injection-key-0123456789abcdef"
CALLING_AE = "MILANPRISMA"
SITE = "milan"
DOWNSTREAM = ("study.received", "study.compliance.checked", "study.qc.completed")
ENV = {"HARMONET_PSEUDONYM_KEY": PSEUDONYM_KEY}


def write_kill_study(directory: Path, *, instances: int = 500) -> list[Path]:
    """`instances` 64x64 MR instances: a T1w of `instances // 5` slices and a BOLD run."""
    t1 = instances // 5
    volumes = (instances - t1) // 10
    spec = small_study("fault-sigkill", t1_slices=t1 + (instances - t1) % 10, epi_slices=10,
                       epi_volumes=volumes)
    return write_study(spec, directory)


def expected_keys(files: list[Path]) -> dict[Path, str]:
    """The blob key each file is stored under (the pseudonymised UIDs, same key)."""
    pseudonyms = Pseudonymiser(key=PSEUDONYM_KEY.encode())
    keys = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        keys[path] = (
            f"dicom/{SITE}/{pseudonyms.uid(ds.StudyInstanceUID)}/"
            f"{pseudonyms.uid(ds.SeriesInstanceUID)}/{pseudonyms.uid(ds.SOPInstanceUID)}.dcm"
        )
    return keys


def stored_digests(data_dir: Path) -> dict[str, str]:
    root = data_dir / "dicom"
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*.dcm")
    } if root.is_dir() else {}


def leftovers(data_dir: Path) -> list[Path]:
    """Temporary or quarantined files: a crash must leave neither."""
    temp = [p for p in data_dir.rglob(".tmp-*")]
    quarantine = data_dir / "quarantine"
    return temp + (list(quarantine.rglob("*")) if quarantine.exists() else [])


def storescu_command(port: int, study_dir: Path) -> list[str]:
    return [require_tool("storescu"), "-v", "-aet", CALLING_AE, "-aec", "HARMONET", "+sd", "+r",
            "127.0.0.1", str(port), str(study_dir)]


def acknowledged(storescu_output: str) -> list[Path]:
    """Files `storescu -v` got a Success C-STORE response for, in order."""
    done: list[Path] = []
    current: Path | None = None
    for line in storescu_output.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif line.startswith("I: Received Store Response (Success)") and current is not None:
            done.append(current)
            current = None
    return done


def downstream_counts(data_dir: Path) -> dict[str, Counter[tuple[str, int]]]:
    """How often each downstream stage recorded each (study, revision), from the journal.

    The registry (registry/, in progress) is the other place a study must be recorded
    once: a registry check belongs beside this one, e.g. counting its rows per study and
    revision, and the callers assert on both.
    """
    counts: dict[str, Counter[tuple[str, int]]] = {}
    for routing_key in DOWNSTREAM:
        events = journal_events(data_dir, routing_key)
        counts[routing_key] = Counter((e.subject, _revision(e)) for e in events)
    return counts


def _revision(event: CloudEvent) -> int:
    data = event.data if isinstance(event.data, dict) else {}
    value = data.get("revision", 0)
    return int(value) if isinstance(value, int | str) else 0


def wait_downstream(data_dir: Path, *, timeout: float = 180) -> None:
    """Until every published (study, revision) has its compliance and QC events."""
    wait_for_journal(data_dir, DOWNSTREAM[0], timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        counts = downstream_counts(data_dir)
        published = set(counts[DOWNSTREAM[0]])
        if all(published <= set(counts[key]) for key in DOWNSTREAM[1:]):
            return
        assert time.monotonic() < deadline, f"downstream incomplete after {timeout}s: {counts}"
        time.sleep(0.2)


def last_instance_count(data_dir: Path) -> int:
    """Instances in the last revision of the (only) study, as `study.received` says."""
    events = journal_events(data_dir, DOWNSTREAM[0])
    data = events[-1].data if events and isinstance(events[-1].data, dict) else {}
    value = data.get("instance_count", 0)
    return int(value) if isinstance(value, int) else 0


@dataclass(frozen=True)
class Reference:
    digests: dict[str, str]  # blob key -> sha256 of what an uninterrupted push stored
    push_seconds: float  # how long that push took: kill points are drawn inside it


def reference_run(study_dir: Path, data_dir: Path) -> Reference:
    """An uninterrupted push: the digest of every stored blob, by key, and its duration."""
    with run_harmonet("up", data_dir, env=ENV, stable_seconds=2.0) as harmonet:
        started = time.monotonic()
        pushed = subprocess.run(storescu_command(harmonet.dicom_port, study_dir),
                                capture_output=True, text=True, timeout=300, check=False)
        push_seconds = time.monotonic() - started
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        wait_downstream(data_dir)
    return Reference(stored_digests(data_dir), push_seconds)


def wait_until_settled(harmonet: HarmonetProcess, *, timeout: float = 60) -> None:
    """`harmonet up` accepts DICOM before the registry has migrated its database. A kill
    in that window tests the registry's migrations, not the receiver (it finds one:
    SQLite DDL outside a transaction, so a half-migrated database stops the restart -
    reported to the registry), so the push starts once the registry says it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = harmonet.log()
        if "registry ready" in log or ('"services started"' in log and '"registry"' not in log):
            return
        time.sleep(0.1)


@dataclass
class KillRound:
    kill_after_seconds: float
    acknowledged: int
    stored_at_kill: int
    lost: list[str] = field(default_factory=list)          # acknowledged, not stored
    differing: list[str] = field(default_factory=list)     # stored, bytes not the reference
    leftovers: list[str] = field(default_factory=list)     # temp or quarantine files
    final_missing: int = 0
    final_differing: int = 0
    downstream: dict[str, dict[str, int]] = field(default_factory=dict)
    final_instance_count: int = 0  # in the last revision's study.received
    expected_instances: int = 0
    restart_error: str = ""  # `harmonet up` did not come back after the kill

    @property
    def revisions(self) -> int:
        return len(self.downstream.get(DOWNSTREAM[0], {}))

    @property
    def ok(self) -> bool:
        """A study pushed with a pause longer than the stable time is published in several
        revisions (a loaded machine does that); each revision must be recorded exactly
        once by every stage, and the last one must hold the whole study."""
        published = set(self.downstream.get(DOWNSTREAM[0], {}))
        once = all(
            set(per_study) == published and set(per_study.values()) == {1}
            for per_study in self.downstream.values()
        ) and set(self.downstream) == set(DOWNSTREAM) and bool(published)
        return not (self.lost or self.differing or self.leftovers or self.final_missing
                    or self.final_differing or self.restart_error) and once and (
            self.final_instance_count == self.expected_instances)


def kill_round(
    study_dir: Path,
    data_dir: Path,
    *,
    reference: Reference,
    keys: dict[Path, str],
    rng: random.Random,
) -> KillRound:
    """One round: push, SIGKILL the receiver at a random point of the push, check, restart,
    push again as the scanner would, check the study and its downstream events."""
    kill_after = rng.uniform(0.0, reference.push_seconds)
    digests = reference.digests
    output_path = data_dir.parent / f"storescu-{data_dir.name}.log"
    with (
        run_harmonet("up", data_dir, env=ENV, stable_seconds=2.0) as harmonet,
        output_path.open("w") as output,
    ):
        wait_until_settled(harmonet)
        push = subprocess.Popen(storescu_command(harmonet.dicom_port, study_dir),
                                stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + kill_after
        # Never after the push ended: the study could be published before the kill, and
        # `harmonet up` would forget that across the restart (module docstring).
        while time.monotonic() < deadline and push.poll() is None:
            time.sleep(0.005)
        harmonet.proc.kill()
        harmonet.proc.wait()
        push.wait(timeout=60)
    acked = acknowledged(output_path.read_text(errors="replace"))
    stored = stored_digests(data_dir)
    result = KillRound(kill_after, len(acked), len(stored))
    result.lost = [keys[p] for p in acked if keys[p] not in stored]
    result.differing = [k for k, digest in stored.items() if digests.get(k) != digest]
    result.leftovers = [str(p) for p in leftovers(data_dir)]
    restarted = contextlib.ExitStack()
    try:
        harmonet = restarted.enter_context(
            run_harmonet("up", data_dir, env=ENV, stable_seconds=2.0))
    except RuntimeError as error:  # exited before its ports opened
        logs = sorted(data_dir.parent.glob("harmonet-up-*.log"), key=lambda p: p.stat().st_mtime)
        result.restart_error = f"{error}: {logs[-1].read_text()[-1500:] if logs else ''}"
        return result
    with restarted:
        repeated = subprocess.run(storescu_command(harmonet.dicom_port, study_dir),
                                  capture_output=True, text=True, timeout=300, check=False)
        assert repeated.returncode == 0, repeated.stdout[-3000:]
        time.sleep(3)  # past the stable time: the study's last revision is published by now
        wait_downstream(data_dir)
        time.sleep(2)  # a second publish of a revision would show by now
    final = stored_digests(data_dir)
    result.final_missing = len(set(digests) - set(final))
    result.final_differing = sum(1 for k, d in final.items() if digests.get(k) != d)
    result.leftovers += [str(p) for p in leftovers(data_dir) if str(p) not in result.leftovers]
    result.downstream = {
        key: {f"{study}@r{rev}": n for (study, rev), n in per.items()}
        for key, per in downstream_counts(data_dir).items()
    }
    result.final_instance_count = last_instance_count(data_dir)
    result.expected_instances = len(digests)
    return result


def summary(rounds: list[KillRound], instances: int) -> str:
    acked = sum(r.acknowledged for r in rounds)
    lost = sum(len(r.lost) for r in rounds)
    differing = sum(len(r.differing) + r.final_differing for r in rounds)
    duplicated = sum(
        n - 1 for r in rounds for per in r.downstream.values() for n in per.values() if n > 1
    )
    return (
        f"SIGKILL iterations {len(rounds)}, instances {instances} per push, instances "
        f"acknowledged before the kill {acked}, lost {lost}, differing bytes {differing}, "
        f"partial/temp files {sum(len(r.leftovers) for r in rounds)}, missing after re-push "
        f"{sum(r.final_missing for r in rounds)}, study revisions "
        f"{sum(r.revisions for r in rounds)} (each recorded once by receiver, compliance "
        f"and QC: {all(r.ok for r in rounds)}), duplicate downstream events {duplicated}"
    )
