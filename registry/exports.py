"""Exports: features joined with clinical variables (CSV, one row per scan) and a BIDS
`participants.tsv`. Both take the caller's site filter; neither reads outside it."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from registry.models import HarmonizedFeatures, QCResult, Study, Subject

NA = "n/a"
ID_COLUMNS = ["study_uid", "revision", "site", "scanner", "subject_id", "study_date",
              "compliance_status", "qc_status", "harmonization_status", "model_version"]


def _clinical(session: Session, sites: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    if not sites:
        return {}
    rows = session.scalars(select(Subject).where(Subject.site.in_(sorted(sites))))
    return {(row.site, row.subject_id): dict(row.clinical or {}) for row in rows}


def features_csv(session: Session, scope: ColumnElement[bool]) -> str:
    """One row per scan (a study's latest revision; phantoms left out): harmonized features
    by name, raw QC features as `raw_<series type>_<feature>`, then clinical variables."""
    studies = list(session.scalars(
        select(Study).where(scope, Study.is_phantom.is_(False)).order_by(Study.site,
                                                                         Study.study_uid)))
    keys = [(s.study_uid, s.revision) for s in studies]
    harmonized = {(h.study_uid, h.revision): h for h in _by_study(session, HarmonizedFeatures,
                                                                    studies)}
    raw: dict[tuple[str, int], dict[str, Any]] = {}
    for qc in _by_study(session, QCResult, studies):
        for name, value in (qc.features or {}).items():
            raw.setdefault((qc.study_uid, qc.revision), {})[f"raw_{qc.series_type}_{name}"] = value
    clinical = _clinical(session, {s.site for s in studies})
    feature_names = sorted({n for k in keys if k in harmonized
                            for n in (harmonized[k].features or {})})
    raw_names = sorted({n for k in keys for n in raw.get(k, {})})
    clinical_names = sorted({n for values in clinical.values() for n in values})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*ID_COLUMNS, *feature_names, *raw_names, *clinical_names])
    for study in studies:
        h = harmonized.get((study.study_uid, study.revision))
        features = (h.features or {}) if h is not None else {}
        raw_values = raw.get((study.study_uid, study.revision), {})
        variables = clinical.get((study.site, study.subject_id or ""), {})
        writer.writerow([
            study.study_uid, study.revision, study.site, study.scanner, study.subject_id or "",
            study.study_date or "", study.compliance_status or "", study.qc_status or "",
            study.harmonization_status or "", (h.model_version or "") if h else "",
            *(_cell(features.get(n)) for n in feature_names),
            *(_cell(raw_values.get(n)) for n in raw_names),
            *(_cell(variables.get(n)) for n in clinical_names),
        ])
    return out.getvalue()


def _by_study(session: Session, model: Any, studies: list[Study]) -> list[Any]:
    wanted = {(s.study_uid, s.revision) for s in studies}
    found: list[Any] = []
    uids = sorted({s.study_uid for s in studies})
    for start in range(0, len(uids), 500):
        chunk = uids[start:start + 500]
        found.extend(r for r in session.scalars(select(model).where(model.study_uid.in_(chunk)))
                     if (r.study_uid, r.revision) in wanted)
    return found


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def bids_label(subject_id: str) -> str:
    """BIDS labels are alphanumeric: the pseudonym without any other character."""
    return re.sub(r"[^A-Za-z0-9]", "", subject_id)


def participants_tsv(session: Session, scope: ColumnElement[bool]) -> str:
    subjects = list(session.scalars(select(Subject).where(scope)
                                    .order_by(Subject.site, Subject.subject_id)))
    variables = sorted({n for s in subjects for n in (s.clinical or {})} - {"site"})
    demographics = _demographics(session, subjects)
    lines = ["\t".join(["participant_id", "site", "sex", "age", *variables])]
    for subject in subjects:
        clinical = subject.clinical or {}
        sex, age = demographics.get((subject.site, subject.subject_id), (None, None))
        cells = [f"sub-{bids_label(subject.subject_id)}", subject.site, sex or NA, age or NA,
                 *(_tsv(clinical.get(n)) for n in variables)]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def _demographics(
    session: Session, subjects: list[Subject]
) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    return {(s.site, s.subject_id): (s.sex, s.age) for s in subjects}


def _tsv(value: Any) -> str:
    if value is None or value == "":
        return NA
    return str(value).replace("\t", " ").replace("\n", " ")
