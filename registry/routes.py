"""`/api/v1` read endpoints: every query carries the token's site filter.

An explicit `site` outside the token's sites is 403; a row of another site
looked up by id is 404, exactly like a row that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from registry import exports
from registry.api import PrincipalDep, SessionDep, StateDep, require_role
from registry.auth import Principal
from registry.models import (
    AuditEntry,
    ComplianceResult,
    HarmonizedFeatures,
    PhantomMeasurement,
    QCResult,
    Scanner,
    ScannerChange,
    Series,
    Site,
    StabilityAlert,
    Study,
    StudyRevision,
    Subject,
)
from registry.schemas import (
    AlertOut,
    AuditOut,
    ComplianceOut,
    HarmonizedOut,
    Page,
    PhantomOut,
    Problem,
    QCOut,
    RevisionOut,
    ScannerChangeOut,
    ScannerDetail,
    ScannerOut,
    SeriesOut,
    SiteOut,
    StudyDetail,
    StudyOut,
    SubjectOut,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DENIED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an invalid one"},
    403: {"model": Problem, "description": "outside the token's sites or role"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
router = APIRouter(prefix="/api/v1", responses=DENIED)
admin_router = APIRouter(prefix="/api/v1", responses=DENIED)

SiteQ = Annotated[str | None, Query(pattern=ID_PATTERN, description="site id")]
ScannerQ = Annotated[str | None, Query(pattern=ID_PATTERN)]
UidQ = Annotated[str | None, Query(pattern=ID_PATTERN)]
WordQ = Annotated[str | None, Query(pattern=r"^[a-z_-]{1,32}$")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]
M = TypeVar("M", bound=BaseModel)


def site_scope(
    principal: Principal, column: InstrumentedAttribute[str], site: str | None
) -> ColumnElement[bool]:
    """The token's site filter, narrowed to `site` (403 when the token does not cover it)."""
    if site is not None:
        if not principal.sees(site):
            raise HTTPException(403, "site outside the token's sites")
        return column == site
    return principal.site_filter(column)


def paginate(
    session: Session, query: Select[Any], model: type[M], *, limit: int, offset: int
) -> Page[M]:
    # The total rides along with the page (one round trip); past the end, count alone.
    found = session.execute(
        query.add_columns(func.count().over().label("total")).limit(limit).offset(offset)
    ).all()
    if found:
        total = int(found[0][-1])
    else:
        counted = session.scalar(select(func.count()).select_from(query.order_by(None)
                                                                  .subquery()))
        total = int(counted or 0)
    return Page[model](  # type: ignore[valid-type]
        items=[model.model_validate(row[0]) for row in found],
        total=total, limit=limit, offset=offset,
    )


def _filters(
    query: Select[Any], **conditions: tuple[InstrumentedAttribute[Any], Any]
) -> Select[Any]:
    for column, value in conditions.values():
        if value is not None:
            query = query.where(column == value)
    return query


# --- sites, scanners, subjects ------------------------------------------------------


@router.get("/sites", tags=["sites"])
def list_sites(session: SessionDep, principal: PrincipalDep, limit: Limit = 100,
               offset: Offset = 0) -> Page[SiteOut]:
    query = select(Site).where(principal.site_filter(Site.id)).order_by(Site.id)
    page = paginate(session, query, SiteOut, limit=limit, offset=offset)
    for item in page.items:
        _site_details(session, item)
    return page


@router.get("/sites/{site_id}", tags=["sites"], responses=NOT_FOUND)
def get_site(site_id: IdPath, session: SessionDep, principal: PrincipalDep) -> SiteOut:
    row = session.get(Site, site_id)
    if row is None or not principal.sees(row.id):
        raise HTTPException(404, "no such site")
    return _site_details(session, SiteOut.model_validate(row))


def _site_details(session: Session, site: SiteOut) -> SiteOut:
    site.scanners = list(session.scalars(
        select(Scanner.id).where(Scanner.site == site.id).order_by(Scanner.id)))
    site.studies = int(session.scalar(
        select(func.count()).select_from(Study).where(Study.site == site.id)) or 0)
    return site


@router.get("/scanners", tags=["scanners"])
def list_scanners(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
                  limit: Limit = 100, offset: Offset = 0) -> Page[ScannerOut]:
    query = select(Scanner).where(site_scope(principal, Scanner.site, site)).order_by(Scanner.id)
    return paginate(session, query, ScannerOut, limit=limit, offset=offset)


@router.get("/scanners/{scanner_id}", tags=["scanners"], responses=NOT_FOUND)
def get_scanner(scanner_id: IdPath, session: SessionDep, principal: PrincipalDep
                ) -> ScannerDetail:
    row = session.get(Scanner, scanner_id)
    if row is None or not principal.sees(row.site):
        raise HTTPException(404, "no such scanner")
    detail = ScannerDetail.model_validate(row)
    detail.changes = [ScannerChangeOut.model_validate(c) for c in session.scalars(
        select(ScannerChange).where(ScannerChange.scanner == scanner_id)
        .order_by(ScannerChange.changed_at, ScannerChange.id))]
    return detail


@router.get("/subjects", tags=["subjects"])
def list_subjects(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
                  subject_id: UidQ = None, limit: Limit = 100, offset: Offset = 0
                  ) -> Page[SubjectOut]:
    query = _filters(select(Subject).where(site_scope(principal, Subject.site, site)),
                     subject=(Subject.subject_id, subject_id))
    page = paginate(session, query.order_by(Subject.site, Subject.subject_id), SubjectOut,
                    limit=limit, offset=offset)
    for item in page.items:
        _subject_details(session, item)
    return page


@router.get("/subjects/{subject_id}", tags=["subjects"], responses=NOT_FOUND)
def get_subject(subject_id: IdPath, session: SessionDep, principal: PrincipalDep,
                site: SiteQ = None) -> SubjectOut:
    row = session.scalars(select(Subject).where(
        Subject.subject_id == subject_id, site_scope(principal, Subject.site, site)
    ).order_by(Subject.site)).first()
    if row is None:
        raise HTTPException(404, "no such subject")
    return _subject_details(session, SubjectOut.model_validate(row))


def _subject_details(session: Session, subject: SubjectOut) -> SubjectOut:
    subject.studies = int(session.scalar(select(func.count()).select_from(Study).where(
        Study.site == subject.site, Study.subject_id == subject.subject_id)) or 0)
    return subject


# --- studies and series -------------------------------------------------------------


@router.get("/studies", tags=["studies"], response_model=Page[StudyOut])
def list_studies(
    session: SessionDep, principal: PrincipalDep, site: SiteQ = None, scanner: ScannerQ = None,
    subject_id: UidQ = None, compliance: WordQ = None, qc: WordQ = None,
    harmonization: WordQ = None, processed: bool | None = None, is_phantom: bool | None = None,
    missing_series: Annotated[bool | None, Query(
        description="true: studies still missing a series their protocol requires")] = None,
    limit: Limit = 50, offset: Offset = 0,
) -> Response:
    query = _filters(
        select(*Study.__table__.columns).where(site_scope(principal, Study.site, site)),
        scanner=(Study.scanner, scanner), subject=(Study.subject_id, subject_id),
        compliance=(Study.compliance_status, compliance), qc=(Study.qc_status, qc),
        harmonization=(Study.harmonization_status, harmonization),
        processed=(Study.processed, processed), phantom=(Study.is_phantom, is_phantom),
    )
    if missing_series is True:
        query = query.where(Study.missing_series.is_not(None))
    elif missing_series is False:
        query = query.where(Study.missing_series.is_(None))
    query = query.order_by(Study.received_at.desc(), Study.study_uid)
    # The hot path: plain rows (no ORM objects), validated once from their mappings and
    # serialised here rather than dumped and re-validated by FastAPI.
    found = session.execute(query.add_columns(func.count().over().label("total"))
                            .limit(limit).offset(offset)).all()
    total = int(found[0].total) if found else int(session.scalar(
        select(func.count()).select_from(query.order_by(None).subquery())) or 0)
    page = Page[StudyOut](items=[StudyOut.model_validate(row._mapping) for row in found],
                          total=total, limit=limit, offset=offset)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/studies/{study_uid}", tags=["studies"], responses=NOT_FOUND)
def get_study(study_uid: IdPath, session: SessionDep, principal: PrincipalDep) -> StudyDetail:
    study = session.get(Study, study_uid)
    if study is None or not principal.sees(study.site):
        raise HTTPException(404, "no such study")

    def rows(model: Any, *order: Any) -> list[Any]:
        return list(session.scalars(select(model).where(model.study_uid == study_uid)
                                    .order_by(*order)))

    return StudyDetail.model_validate({
        **StudyOut.model_validate(study).model_dump(),
        "revisions": [RevisionOut.model_validate(r) for r in
                      rows(StudyRevision, StudyRevision.revision)],
        "series": [SeriesOut.model_validate(r) for r in
                   rows(Series, Series.series_number, Series.series_uid)],
        "compliance": [ComplianceOut.model_validate(r) for r in
                       rows(ComplianceResult, ComplianceResult.revision,
                            ComplianceResult.series_uid)],
        "qc": [QCOut.model_validate(r) for r in
               rows(QCResult, QCResult.revision, QCResult.series_uid)],
        "harmonized": [HarmonizedOut.model_validate(r) for r in
                       rows(HarmonizedFeatures, HarmonizedFeatures.revision)],
    })


@router.get("/series", tags=["series"])
def list_series(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
                study_uid: UidQ = None, series_type: WordQ = None, limit: Limit = 100,
                offset: Offset = 0) -> Page[SeriesOut]:
    query = _filters(select(Series).where(site_scope(principal, Series.site, site)),
                     study=(Series.study_uid, study_uid), kind=(Series.series_type, series_type))
    query = query.order_by(Series.study_uid, Series.series_number, Series.series_uid)
    return paginate(session, query, SeriesOut, limit=limit, offset=offset)


@router.get("/series/{series_uid}", tags=["series"], responses=NOT_FOUND)
def get_series(series_uid: IdPath, session: SessionDep, principal: PrincipalDep) -> SeriesOut:
    row = session.scalars(select(Series).where(
        Series.series_uid == series_uid, principal.site_filter(Series.site))).first()
    if row is None:
        raise HTTPException(404, "no such series")
    return SeriesOut.model_validate(row)


# --- stage results ------------------------------------------------------------------


@router.get("/compliance", tags=["compliance"])
def list_compliance(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
                    study_uid: UidQ = None, verdict: WordQ = None, series_type: WordQ = None,
                    limit: Limit = 100, offset: Offset = 0) -> Page[ComplianceOut]:
    model = ComplianceResult
    query = _filters(select(model).where(site_scope(principal, model.site, site)),
                     study=(model.study_uid, study_uid), verdict=(model.verdict, verdict),
                     kind=(model.series_type, series_type))
    query = query.order_by(model.study_uid, model.revision, model.series_uid)
    return paginate(session, query, ComplianceOut, limit=limit, offset=offset)


@router.get("/qc", tags=["qc"])
def list_qc(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
            study_uid: UidQ = None, series_type: WordQ = None, status: WordQ = None,
            limit: Limit = 100, offset: Offset = 0) -> Page[QCOut]:
    query = _filters(select(QCResult).where(site_scope(principal, QCResult.site, site)),
                     study=(QCResult.study_uid, study_uid), status=(QCResult.status, status),
                     kind=(QCResult.series_type, series_type))
    query = query.order_by(QCResult.study_uid, QCResult.revision, QCResult.series_uid)
    return paginate(session, query, QCOut, limit=limit, offset=offset)


@router.get(
    "/qc/reports/{site_id}/{study_uid}/{revision}/{series_uid}/{filename}", tags=["qc"],
    responses={**NOT_FOUND, 200: {"content": {"image/png": {}, "application/json": {}}}},
)
def get_qc_report(
    site_id: IdPath, study_uid: IdPath, revision: Annotated[str, Path(pattern=r"^r[0-9]{1,6}$")],
    series_uid: IdPath,
    filename: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}\.(png|json)$")],
    principal: PrincipalDep, state: StateDep,
) -> Response:
    """A QC report file (mosaic.png, carpet.png, metrics.json): the blob key
    `qc/<site>/<study>/r<revision>/<series>/<file>` of a QC result's `report`, minus `qc/`."""
    if not principal.sees(site_id) or state.blobs is None:
        raise HTTPException(404, "no such report")
    key = f"qc/{site_id}/{study_uid}/{revision}/{series_uid}/{filename}"
    try:
        content = state.blobs.get(key)
    except (OSError, ValueError) as exc:
        raise HTTPException(404, "no such report") from exc
    media = "image/png" if filename.endswith(".png") else "application/json"
    return Response(content, media_type=media)


@router.get("/phantom", tags=["phantom"])
def list_phantom(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
                 scanner: ScannerQ = None, phantom_type: WordQ = None, limit: Limit = 100,
                 offset: Offset = 0) -> Page[PhantomOut]:
    """Phantom measurement history, oldest first (one scanner's stability over time)."""
    model = PhantomMeasurement
    query = _filters(select(model).where(site_scope(principal, model.site, site)),
                     scanner=(model.scanner, scanner), kind=(model.phantom_type, phantom_type))
    query = query.order_by(model.scanner, model.measured_at, model.id)
    return paginate(session, query, PhantomOut, limit=limit, offset=offset)


@router.get("/alerts", tags=["phantom"])
def list_alerts(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
                scanner: ScannerQ = None, limit: Limit = 100, offset: Offset = 0
                ) -> Page[AlertOut]:
    query = _filters(
        select(StabilityAlert).where(site_scope(principal, StabilityAlert.site, site)),
        scanner=(StabilityAlert.scanner, scanner),
    ).order_by(StabilityAlert.raised_at.desc(), StabilityAlert.id)
    return paginate(session, query, AlertOut, limit=limit, offset=offset)


@router.get("/harmonized", tags=["harmonized"])
def list_harmonized(session: SessionDep, principal: PrincipalDep, site: SiteQ = None,
                    study_uid: UidQ = None, status: WordQ = None, limit: Limit = 100,
                    offset: Offset = 0) -> Page[HarmonizedOut]:
    model = HarmonizedFeatures
    query = _filters(select(model).where(site_scope(principal, model.site, site)),
                     study=(model.study_uid, study_uid), status=(model.status, status))
    query = query.order_by(model.study_uid, model.revision)
    return paginate(session, query, HarmonizedOut, limit=limit, offset=offset)


# --- exports ------------------------------------------------------------------------


@router.get("/exports/features.csv", tags=["exports"],
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def export_features(session: SessionDep, principal: PrincipalDep, site: SiteQ = None
                    ) -> Response:
    """Harmonized (and raw QC) features joined with clinical variables, one row per scan."""
    scope = site_scope(principal, Study.site, site)
    return Response(exports.features_csv(session, scope), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="features.csv"'})


@router.get("/exports/participants.tsv", tags=["exports"], responses={
    200: {"content": {"text/tab-separated-values": {"schema": {"type": "string"}}}}})
def export_participants(session: SessionDep, principal: PrincipalDep, site: SiteQ = None
                        ) -> Response:
    """A BIDS `participants.tsv` of the token's subjects with their clinical variables."""
    scope = site_scope(principal, Subject.site, site)
    return Response(exports.participants_tsv(session, scope),
                    media_type="text/tab-separated-values",
                    headers={"Content-Disposition": 'attachment; filename="participants.tsv"'})


# --- admin --------------------------------------------------------------------------


@admin_router.get("/audit", tags=["admin"])
def list_audit(
    session: SessionDep, principal: Annotated[Principal, Depends(require_role("admin"))],
    state: StateDep,
    token_id: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    action: Annotated[str | None, Query(pattern=r"^(read|write|denied)$")] = None,
    limit: Limit = 100, offset: Offset = 0,
) -> Page[AuditOut]:
    """The append-only audit log, newest first (admins only)."""
    state.audit.flush()
    query = _filters(select(AuditEntry), token=(AuditEntry.token_id, token_id),
                     action=(AuditEntry.action, action))
    return paginate(session, query.order_by(AuditEntry.id.desc()), AuditOut, limit=limit,
                    offset=offset)
