"""Missing-scan detection: a non-phantom study that, `missing_scan_hours` after it arrived,
still lacks a series type its site's protocol marks `required: true` is flagged
(`studies.missing_series`, the `missing_series` API filter and the
`harmonet_registry_studies_missing_series{site}` gauge)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import ComplianceResult, Study
from services import metrics
from services.config import HarmonetConfig


def required_series(config: HarmonetConfig, site: str) -> set[str]:
    protocol = config.protocol_for_site(site)
    return {rule.type for rule in protocol.series if rule.required} if protocol else set()


def flag_missing_series(
    session: Session, config: HarmonetConfig, *, now: datetime, after_hours: float
) -> dict[str, int]:
    """Re-evaluate every study old enough; returns (and exports) the flagged count per site."""
    cutoff = now - timedelta(hours=after_hours)
    studies = list(session.scalars(select(Study).where(
        Study.is_phantom.is_(False), Study.received_at <= cutoff)))
    present: dict[tuple[str, int], set[str]] = {}
    for uid, revision, series_type in session.execute(
        select(ComplianceResult.study_uid, ComplianceResult.revision,
               ComplianceResult.series_type)
        .join(Study, Study.study_uid == ComplianceResult.study_uid)
        .where(Study.is_phantom.is_(False), Study.received_at <= cutoff)
    ):
        present.setdefault((uid, revision), set()).add(series_type)
    flagged: Counter[str] = Counter()
    for study in studies:
        wanted = required_series(config, study.site)
        missing = sorted(wanted - present.get((study.study_uid, study.revision), set()))
        value = missing or None
        if study.missing_series != value:
            study.missing_series = value
        if missing:
            flagged[study.site] += 1
    for site in {s.id for s in config.sites} | set(flagged):
        metrics.REGISTRY_MISSING_SERIES.labels(site=site).set(flagged.get(site, 0))
    return dict(flagged)
