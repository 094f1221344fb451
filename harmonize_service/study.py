"""What the service harmonizes of one study: its features, covariates and batch, read from
`study.qc.completed` and from what `study.received` told us about the study (pure functions).

Feature names are `<series_type>.<feature>` (e.g. `t1w.gm_volume_ml`), from the first
measured anatomical series of each type; models are fitted on tables with those columns.
Covariates: `age` in years from DICOM PatientAge (`070Y`, `006M`, `012W`, `030D`), `sex` from
PatientSex (`F`, `M`, `O`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from services.events import StudyQCCompleted, StudyReceived

BatchKind = Literal["site", "scanner", "scanner_epoch"]
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_DAYS_PER_YEAR = 365.25
PHANTOM_KINDS = frozenset({"fbirn", "acr"})


@dataclass(frozen=True)
class StudyRecord:
    """What harmonization keeps from `study.received` until the study's QC arrives."""

    age_years: float | None
    sex: str | None
    software: str | None
    is_phantom: bool

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StudyRecord:
        return cls(**json.loads(raw))


def record_of(received: StudyReceived) -> StudyRecord:
    software = next(
        (
            str(s.headers["SoftwareVersions"])
            for s in received.series
            if s.headers.get("SoftwareVersions") not in (None, "", [])
        ),
        None,
    )
    return StudyRecord(
        age_years=age_in_years(received.patient_age),
        sex=(received.patient_sex or "").strip().upper() or None,
        software=software,
        is_phantom=received.is_phantom,
    )


def age_in_years(value: str | None) -> float | None:
    """DICOM AS (`nnnD|W|M|Y`) in years; None when absent or malformed."""
    match = _AGE.match((value or "").strip().upper())
    if match is None:
        return None
    number, unit = int(match.group(1)), match.group(2)
    days = {"D": 1.0, "W": 7.0, "M": _DAYS_PER_YEAR / 12.0, "Y": _DAYS_PER_YEAR}[unit]
    return float(number) if unit == "Y" else number * days / _DAYS_PER_YEAR


def study_features(completed: StudyQCCompleted) -> dict[str, float]:
    """`<series_type>.<feature>` of the first measured anatomical series of each type."""
    features: dict[str, float] = {}
    seen: set[str] = set()
    for series in completed.series:
        if series.kind != "anatomical" or series.status != "measured":
            continue
        if series.series_type in seen:
            continue
        seen.add(series.series_type)
        for name, value in series.features.items():
            if value is not None:
                features[f"{series.series_type}.{name}"] = float(value)
    return features


def is_phantom(completed: StudyQCCompleted, record: StudyRecord | None) -> bool:
    if record is not None and record.is_phantom:
        return True
    kinds = {s.kind for s in completed.series if s.status == "measured"}
    return bool(kinds) and kinds <= PHANTOM_KINDS


def covariates_of(record: StudyRecord | None) -> dict[str, Any]:
    if record is None:
        return {}
    values: dict[str, Any] = {"age": record.age_years, "sex": record.sex}
    return {name: value for name, value in values.items() if value is not None}


def batch_of(kind: BatchKind, completed: StudyQCCompleted, record: StudyRecord | None) -> str:
    """The study's batch label; a scanner epoch is the scanner with its software version."""
    if kind == "site":
        return completed.site
    if kind == "scanner":
        return completed.scanner
    software = record.software if record is not None and record.software else "unknown"
    return f"{completed.scanner}@{software}"


@dataclass(frozen=True)
class Scan:
    """One study revision ready to harmonize (or waiting for its batch)."""

    study_uid: str
    revision: int
    site: str
    scanner: str
    features: dict[str, float]
    covariates: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Scan:
        return cls(**json.loads(raw))

    def has(self, feature_names: tuple[str, ...], covariate_names: tuple[str, ...]) -> bool:
        return all(f in self.features for f in feature_names) and all(
            c in self.covariates for c in covariate_names
        )
