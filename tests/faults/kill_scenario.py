"""SIGKILL `harmonet up` while `storescu` pushes a study or while the pipeline behind it
works on the study, restart it, push again.

Shared by `tests/faults/test_receiver_sigkill.py` (a few rounds) and
`benchmarks/faults.py` (many). What a round checks, in the scanner's terms:

* every instance `storescu -v` saw a Success response for is on disk right after the
  kill, byte for byte what an uninterrupted reference run stored for the same file
  (pseudonymisation is deterministic under a fixed `HARMONET_PSEUDONYM_KEY`);
* nothing else on disk is partial: every stored file equals its reference, no
  `.tmp-*` file, nothing in `quarantine/`;
* after the restart and the repeated push, the study is complete and identical to
  the reference; the journal holds one `study.received`, one compliance and one QC event
  id per published revision (`downstream_counts`; a copy under the same id, re-published
  after the crash, is counted apart: consumers drop it by id);
* the registry's own rows (`registry_rows.py`, the SQLite database of `harmonet up`)
  hold every published revision exactly once: one revision row, one compliance and one QC
  row per series, one harmonization row and one `study.processed` in the outbox.

Kill points (`draw_kill_point`) are uniform over the push and a window after it:
`stable` - after the push ended, before the study is published; `processed` - until the
reference run's registry recorded the study as processed, so kills also land during the
publish and while compliance, QC, harmonization and the registry work. `harmonet up`
journals its state store to disk (`services/state/file.py`), so a study pending or
published before the kill is known after the restart. Each round records the phase its
kill landed in (`KillRound.phase`: push / stable / pipeline). A kill in the pipeline
phase leaves events queued in the in-process bus that no stage had handled yet; its
journal (`services/bus/journal.py`) delivers them again at the restart (before it had
one, such a study was never processed). The suite's rounds use the `processed` window,
plus one round after the push and before the publish, and one killed while QC works;
`benchmarks/faults.py` uses `processed` by default.
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
from tests.faults.registry_rows import (
    expected_revisions,
    registry_figures,
    registry_rows,
    registry_violations,
    sqlite_url,
    wait_for_registry,
)
from tests.support.fakes import journal_events, wait_for_journal
from tests.support.processes import HarmonetProcess, require_tool, run_harmonet

PSEUDONYM_KEY = "fault-injection-key-0123456789abcdef"
CALLING_AE = "MILANPRISMA"
SITE = "milan"
DOWNSTREAM = ("study.received", "study.compliance.checked", "study.qc.completed")
ENV = {"HARMONET_PSEUDONYM_KEY": PSEUDONYM_KEY}
STABLE_SECONDS = 2.0
# After the push ended, a kill this much sooner is before the study's publish (stable time
# after the last instance, then the monitor's next tick), with room for a loaded machine.
SAFELY_BEFORE_PUBLISH = 0.75 * STABLE_SECONDS


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
    """How many event ids each downstream stage published for each (study, revision), from
    the journal: 1 is "recorded once". The same id twice (a re-publish after a crash) counts
    once here and in `journal_copies`; the registry's rows are checked by `registry_rows`."""
    counts: dict[str, Counter[tuple[str, int]]] = {}
    for routing_key in DOWNSTREAM:
        ids = {(e.subject, _revision(e), e.id) for e in journal_events(data_dir, routing_key)}
        counts[routing_key] = Counter((study, revision) for study, revision, _ in ids)
    return counts


def journal_copies(data_dir: Path) -> int:
    """Downstream events journalled again under an id already journalled."""
    return sum(len(events) - len({e.id for e in events})
               for events in (journal_events(data_dir, key) for key in DOWNSTREAM))


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


def published_revisions(data_dir: Path) -> dict[tuple[str, int], frozenset[str]]:
    """Every (study, revision) the journal saw published, with its series."""
    return expected_revisions(journal_events(data_dir, DOWNSTREAM[0]))


@dataclass(frozen=True)
class Reference:
    digests: dict[str, str]  # blob key -> sha256 of what an uninterrupted push stored
    push_seconds: float  # how long that push took
    processed_seconds: float  # from the push's end until the registry processed the study


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL `seconds` after the push started (`after="start"`; at the push's end if it
    ends first), after storescu exited (`after="push"`), or after the journal first holds
    an event of routing key `after` (e.g. "study.compliance.checked": QC is at work)."""

    seconds: float
    after: str = "start"

    def __str__(self) -> str:
        return f"{self.seconds:.2f}s after the {self.after}"


def draw_kill_point(rng: random.Random, reference: Reference, *, window: str) -> KillPoint:
    """Uniform over the push and, after it, `window`: "stable" - the stable time, before
    the study is published (what holds today); "processed" - until the reference run's
    registry processed the study, so kills land during the publish and the pipeline's work
    too (a kill after the publish loses the in-process bus's queued events: reliability.md).
    Points past the push count from this round's push end, not the reference's."""
    after_push = {"stable": SAFELY_BEFORE_PUBLISH, "processed": reference.processed_seconds}
    point = rng.uniform(0.0, reference.push_seconds + after_push[window])
    if point < reference.push_seconds:
        return KillPoint(point)
    return KillPoint(point - reference.push_seconds, after="push")


def reference_run(study_dir: Path, data_dir: Path) -> Reference:
    """An uninterrupted push: the digest of every stored blob, by key, and its durations."""
    with run_harmonet("up", data_dir, env=ENV, stable_seconds=STABLE_SECONDS) as harmonet:
        wait_until_settled(harmonet)
        started = time.monotonic()
        pushed = subprocess.run(storescu_command(harmonet.dicom_port, study_dir),
                                capture_output=True, text=True, timeout=300, check=False)
        pushed_at = time.monotonic()
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        wait_downstream(data_dir)
        expected = published_revisions(data_dir)
        rows = wait_for_registry(sqlite_url(data_dir), expected)
        processed_seconds = time.monotonic() - pushed_at
        violations = registry_violations(rows, expected)
        assert not violations, violations
    return Reference(stored_digests(data_dir), pushed_at - started, processed_seconds)


def wait_until_settled(harmonet: HarmonetProcess, *, timeout: float = 60) -> None:
    """`harmonet up` accepts DICOM before the registry has migrated its database; the push
    starts once the registry says it is ready, so kill points are measured from the push,
    not from the start-up (a kill during a migration is the registry's own test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = harmonet.log()
        if "registry ready" in log or ('"services started"' in log and '"registry"' not in log):
            return
        time.sleep(0.1)


PHASES = ("push", "stable", "pipeline")  # where a kill landed: see KillRound.phase


@dataclass
class KillRound:
    kill_point: KillPoint
    acknowledged: int
    stored_at_kill: int
    # "push": storescu still sending; "stable": push over, study not yet published;
    # "pipeline": `study.received` published (logged) before the kill
    phase: str = "push"
    lost: list[str] = field(default_factory=list)          # acknowledged, not stored
    differing: list[str] = field(default_factory=list)     # stored, bytes not the reference
    leftovers: list[str] = field(default_factory=list)     # temp or quarantine files
    final_missing: int = 0
    final_differing: int = 0
    downstream: dict[str, dict[str, int]] = field(default_factory=dict)  # event ids per key
    journal_copies: int = 0  # same id journalled again: a re-publish consumers drop by id
    final_instance_count: int = 0  # in the last revision's study.received
    expected_instances: int = 0
    restart_error: str = ""  # `harmonet up` did not come back after the kill
    pipeline_error: str = ""  # after the re-push, a stage never recorded a revision
    registry: list[str] = field(default_factory=list)  # registry_violations: [] is once
    registry_figures: dict[str, int] = field(default_factory=dict)

    @property
    def revisions(self) -> int:
        return len(self.downstream.get(DOWNSTREAM[0], {}))

    @property
    def ok(self) -> bool:
        """A study pushed with a pause longer than the stable time is published in several
        revisions (a loaded machine does that); each revision must be recorded exactly
        once by every stage and by the registry, and the last one must hold the whole
        study."""
        published = set(self.downstream.get(DOWNSTREAM[0], {}))
        once = all(
            set(per_study) == published and set(per_study.values()) == {1}
            for per_study in self.downstream.values()
        ) and set(self.downstream) == set(DOWNSTREAM) and bool(published)
        return not (self.lost or self.differing or self.leftovers or self.final_missing
                    or self.final_differing or self.restart_error or self.pipeline_error
                    or self.registry) and once and bool(self.registry_figures) and (
            self.final_instance_count == self.expected_instances)


def kill_round(
    study_dir: Path,
    data_dir: Path,
    *,
    reference: Reference,
    keys: dict[Path, str],
    kill_point: KillPoint,
    settle_timeout: float | None = None,
) -> KillRound:
    """One round: push, SIGKILL `harmonet up` at `kill_point`, check, restart, push again as
    the scanner would, check the study, its downstream events and the registry's rows."""
    digests = reference.digests
    output_path = data_dir.parent / f"storescu-{data_dir.name}.log"
    with (
        run_harmonet("up", data_dir, env=ENV, stable_seconds=STABLE_SECONDS) as harmonet,
        output_path.open("w") as output,
    ):
        wait_until_settled(harmonet)
        push = subprocess.Popen(storescu_command(harmonet.dicom_port, study_dir),
                                stdout=output, stderr=subprocess.STDOUT)
        _wait_for(kill_point, push, data_dir)
        pushing = push.poll() is None
        harmonet.proc.kill()
        harmonet.proc.wait()
        push.wait(timeout=60)
        published = '"study.received published"' in harmonet.log()
    acked = acknowledged(output_path.read_text(errors="replace"))
    stored = stored_digests(data_dir)
    result = KillRound(kill_point, len(acked), len(stored),
                       phase="push" if pushing else "pipeline" if published else "stable")
    result.lost = [keys[p] for p in acked if keys[p] not in stored]
    result.differing = [k for k, digest in stored.items() if digests.get(k) != digest]
    result.leftovers = [str(p) for p in leftovers(data_dir)]
    restarted = contextlib.ExitStack()
    try:
        harmonet = restarted.enter_context(
            run_harmonet("up", data_dir, env=ENV, stable_seconds=STABLE_SECONDS))
    except RuntimeError as error:  # exited before its ports opened
        logs = sorted(data_dir.parent.glob("harmonet-up-*.log"), key=lambda p: p.stat().st_mtime)
        result.restart_error = f"{error}: {logs[-1].read_text()[-1500:] if logs else ''}"
        return result
    with restarted:
        repeated = subprocess.run(storescu_command(harmonet.dicom_port, study_dir),
                                  capture_output=True, text=True, timeout=300, check=False)
        assert repeated.returncode == 0, repeated.stdout[-3000:]
        time.sleep(STABLE_SECONDS + 1)  # the study's last revision is published by now
        timeout = settle_timeout or max(60.0, 4 * reference.processed_seconds)
        _settle(result, data_dir, timeout=timeout)
        time.sleep(2)  # a second publish of a revision would show by now
        _record_pipeline(result, data_dir)
    final = stored_digests(data_dir)
    result.final_missing = len(set(digests) - set(final))
    result.final_differing = sum(1 for k, d in final.items() if digests.get(k) != d)
    result.leftovers += [str(p) for p in leftovers(data_dir) if str(p) not in result.leftovers]
    result.final_instance_count = last_instance_count(data_dir)
    result.expected_instances = len(digests)
    return result


def _wait_for(kill_point: KillPoint, push: subprocess.Popen[bytes], data_dir: Path) -> None:
    if kill_point.after == "push":
        push.wait(timeout=300)
        time.sleep(kill_point.seconds)
        return
    if kill_point.after != "start":
        wait_for_journal(data_dir, kill_point.after, timeout=300)
        time.sleep(kill_point.seconds)
        return
    deadline = time.monotonic() + kill_point.seconds
    while time.monotonic() < deadline and push.poll() is None:
        time.sleep(0.005)


def _settle(result: KillRound, data_dir: Path, *, timeout: float) -> None:
    """Wait until every published revision went through the stages and the registry; a
    stage that never records one is this round's failure, not the run's end."""
    try:
        wait_downstream(data_dir, timeout=timeout)
    except AssertionError as error:
        result.pipeline_error = str(error)
        return
    wait_for_registry(sqlite_url(data_dir), published_revisions(data_dir), timeout=timeout)


def _record_pipeline(result: KillRound, data_dir: Path) -> None:
    result.downstream = {
        key: {f"{study}@r{rev}": n for (study, rev), n in per.items()}
        for key, per in downstream_counts(data_dir).items()
    }
    result.journal_copies = journal_copies(data_dir)
    expected = published_revisions(data_dir)
    rows = registry_rows(sqlite_url(data_dir), {uid for uid, _ in expected})
    result.registry = registry_violations(rows, expected)
    result.registry_figures = registry_figures(rows)


def summary(rounds: list[KillRound], instances: int) -> str:
    acked = sum(r.acknowledged for r in rounds)
    lost = sum(len(r.lost) for r in rounds)
    differing = sum(len(r.differing) + r.final_differing for r in rounds)
    duplicated = sum(
        n - 1 for r in rounds for per in r.downstream.values() for n in per.values() if n > 1
    )
    phases = ", ".join(f"{sum(r.phase == p for r in rounds)} {p}" for p in PHASES)
    figures = [r.registry_figures for r in rounds if r.registry_figures]
    registry = {key: sum(f[key] for f in figures) for key in (
        "revisions", "compliance_rows", "qc_rows", "harmonized_rows", "processed_events",
        "duplicate_rows")}
    return (
        f"SIGKILL iterations {len(rounds)} (killed during: {phases}), instances {instances} "
        f"per push, instances acknowledged before the kill {acked}, lost {lost}, differing "
        f"bytes {differing}, partial/temp files {sum(len(r.leftovers) for r in rounds)}, "
        f"missing after re-push {sum(r.final_missing for r in rounds)}, study revisions "
        f"{sum(r.revisions for r in rounds)} (each recorded once by receiver, compliance, "
        f"QC and the registry: {all(r.ok for r in rounds)}), duplicate downstream event ids "
        f"{duplicated}, re-published copies (same id) {sum(r.journal_copies for r in rounds)}, "
        f"rounds with a revision a stage never recorded "
        f"{sum(bool(r.pipeline_error) for r in rounds)}; registry: revisions "
        f"{registry['revisions']}, compliance rows {registry['compliance_rows']}, QC rows "
        f"{registry['qc_rows']}, harmonization rows {registry['harmonized_rows']}, "
        f"study.processed {registry['processed_events']}, rows per revision (per series) at "
        f"most {max((f['max_rows_per_fact'] for f in figures), default=0)}, duplicates "
        f"{registry['duplicate_rows']}, violations {sum(len(r.registry) for r in rounds)}"
    )
