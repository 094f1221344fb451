"""Where `harmonet demo` watches the pipeline: the registry API, else the event journal.

The registry is the source of truth when it is reachable (`study.processed` per study
revision); on the same host as `harmonet up` the event journal
(`<data dir>/events/events.jsonl`) holds the same facts. Without a registry service
installed, a study counts as processed at the last stage that is installed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

# The last event of each stage, latest first (ARCHITECTURE.md, "The flow").
STAGE_EVENTS = (("registry", "study.processed"), ("harmonize", "study.harmonized"),
                ("qc", "study.qc.completed"), ("compliance", "study.compliance.checked"),
                ("receiver", "study.received"))


def _scanner_sets() -> defaultdict[str, set[str]]:
    return defaultdict(set)


@dataclass
class Observed:
    """What the demo saw: per stage (routing key) and scanner id the study uids that reached
    it; per scanner the deviant study uids, the metrics that went out of control and the
    study uids harmonized (status `harmonized`)."""

    stages: defaultdict[str, defaultdict[str, set[str]]] = field(
        default_factory=lambda: defaultdict(_scanner_sets))
    deviant: defaultdict[str, set[str]] = field(default_factory=_scanner_sets)
    alerts: defaultdict[str, set[str]] = field(default_factory=_scanner_sets)
    harmonized: defaultdict[str, set[str]] = field(default_factory=_scanner_sets)

    def at(self, stage: str, scanner: str) -> set[str]:
        return self.stages[stage][scanner]

    def seen(self, stage: str) -> bool:
        return any(self.stages[stage].values())


class ProgressSource(Protocol):
    def poll(self) -> Observed: ...

    def describe(self) -> str: ...

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages a study goes through here, latest first."""


def installed_stages(installed: set[str] | None = None) -> tuple[str, ...]:
    """The routing keys that end each installed stage, latest first."""
    if installed is None:
        installed = {entry.name for entry in entry_points(group="harmonet.services")}
    return tuple(key for service, key in STAGE_EVENTS if service in installed) or (
        "study.received",)


class JournalSource:
    """Reads `events.jsonl` incrementally (only the lines appended since the last poll)."""

    def __init__(self, path: Path, *, stages: tuple[str, ...] | None = None) -> None:
        self.path = path
        self.stages = stages or installed_stages()
        self._offset = 0
        self._observed = Observed()

    def describe(self) -> str:
        return f"{self.stages[0]} in {self.path}"

    def poll(self) -> Observed:
        if not self.path.exists():
            return self._observed
        with self.path.open("rb") as journal:
            journal.seek(self._offset)
            chunk = journal.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for next time
        self._offset += len(complete)
        for line in complete.splitlines():
            if line.strip():
                with_event(self._observed, json.loads(line))
        return self._observed


def with_event(observed: Observed, event: dict[str, Any]) -> None:
    """Fold one CloudEvent (as JSON) into `observed`."""
    routing_key = str(event.get("type", "")).removeprefix("org.harmonet.")
    data = event.get("data") or {}
    scanner, study_uid = data.get("scanner"), str(data.get("study_uid"))
    if not isinstance(scanner, str):
        return
    if routing_key in {key for _, key in STAGE_EVENTS}:
        observed.stages[routing_key][scanner].add(study_uid)
    if routing_key == "study.compliance.checked" and any(
            series.get("verdict") == "deviant" for series in data.get("series", [])):
        observed.deviant[scanner].add(study_uid)
    if routing_key == "study.harmonized" and data.get("status") == "harmonized":
        observed.harmonized[scanner].add(study_uid)
    if routing_key == "scanner.stability.alert" and data.get("state") == "out_of_control":
        observed.alerts[scanner].add(str(data.get("metric")))


class RegistrySource:
    """The registry's REST API: studies with their stage statuses, scanner alerts."""

    stages = ("study.processed", "study.received")

    def __init__(self, api: str, token: str) -> None:
        self.api = api.rstrip("/")
        self.token = token

    def describe(self) -> str:
        return f"study.processed in the registry at {self.api}"

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.api}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def poll(self) -> Observed:
        observed = Observed()
        for study in self.pages("/api/v1/studies"):
            scanner, uid = study.get("scanner"), str(study.get("study_uid"))
            if not isinstance(scanner, str):
                continue
            observed.at("study.received", scanner).add(uid)
            if study.get("processed"):
                observed.at("study.processed", scanner).add(uid)
            if study.get("compliance_status") in ("deviant", "excluded"):
                observed.deviant[scanner].add(uid)
            if study.get("harmonization_status") == "harmonized":
                observed.harmonized[scanner].add(uid)
        for alert in self.pages("/api/v1/alerts"):
            if alert.get("state") == "out_of_control":
                observed.alerts[str(alert.get("scanner"))].add(str(alert.get("metric")))
        return observed

    def pages(self, path: str, *, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list (`items`, `total`, `limit`, `offset`)."""
        offset = 0
        while True:
            page = self.get(f"{path}?limit={limit}&offset={offset}")
            items = [i for i in page.get("items", []) if isinstance(i, dict)]
            yield from items
            offset += len(items)
            if not items or offset >= int(page.get("total", 0)):
                return


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def choose_source(*, api: str, token: str | None, data_dir: Path) -> ProgressSource | None:
    """The registry API when reachable with a token, else the journal when it is readable."""
    if token and reachable(f"{api.rstrip('/')}/healthz"):
        return RegistrySource(api, token)
    journal = data_dir / "events" / "events.jsonl"
    if journal.exists() or data_dir.exists():
        return JournalSource(journal)
    return None
