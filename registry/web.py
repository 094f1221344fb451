"""The registry's page for humans at `/ui/`: scanners whose stability is out of control,
studies with compliance and QC status and links to their QC mosaics, and per-scanner
phantom trends as inline SVG. Server-rendered, no JS.

Sign-in: `/ui/?token=...` once sets an HttpOnly, SameSite=Strict cookie (the mosaics are
fetched from the site-scoped API with it); without a token the page shows a form.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from registry.api import COOKIE, SessionDep
from registry.auth import Principal, authenticate
from registry.models import PhantomMeasurement, QCResult, StabilityAlert, Study

router = APIRouter(include_in_schema=False)
STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .5em}.status-excluded{background:#f8d0d0}
.status-deviant{background:#fbe9c0}.status-compliant{background:#d8f0d8}
.alert{background:#f8d0d0}
svg{border:1px solid #ddd;margin:.5em}"""
LOGIN = """<!doctype html><title>HarmoNet registry</title><h1>HarmoNet registry</h1>
<form id="login" method="get" action="/ui/"><label>API token
<input type="password" name="token" id="token"></label> <button>Sign in</button></form>"""


@router.get("/ui", response_model=None)
@router.get("/ui/", response_model=None)
def page(request: Request, session: SessionDep,
         token: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    if token:
        if authenticate(session, token) is None:
            return HTMLResponse(LOGIN, status_code=401)
        redirect = RedirectResponse("/ui/", status_code=303)
        redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return redirect
    cookie = request.cookies.get(COOKIE)
    principal = authenticate(session, cookie) if cookie else None
    if principal is None:
        return HTMLResponse(LOGIN, status_code=401)
    request.state.principal = principal
    body = (_alerts(session, principal) + _studies(session, principal)
            + _phantom_trends(session, principal))
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>HarmoNet "
                        f"registry</title><style>{STYLE}</style></head><body><h1>HarmoNet "
                        f"registry</h1>{body}</body></html>")


def _alerts(session: SessionDep, principal: Principal) -> str:
    """Scanner metrics whose latest stability alert is `out_of_control` (one that came back
    in control since is not listed)."""
    latest: dict[tuple[str, str, str], StabilityAlert] = {}
    for alert in session.scalars(select(StabilityAlert).where(
            principal.site_filter(StabilityAlert.site))
            .order_by(StabilityAlert.raised_at, StabilityAlert.id)):
        latest[(alert.site, alert.scanner, alert.metric)] = alert
    rows = "".join(
        f"<tr class='alert' data-alert='{escape(a.scanner)}'><td>{escape(a.site)}</td>"
        f"<td>{escape(a.scanner)}</td><td>{escape(a.metric)}</td><td>{a.value:.4g}</td>"
        f"<td>{'' if a.zscore is None else f'{a.zscore:+.1f}'}</td>"
        f"<td>{a.raised_at:%Y-%m-%d %H:%M}</td></tr>"
        for a in latest.values() if a.state == "out_of_control")
    if not rows:
        return "<h2>Scanner stability</h2><p id='alerts'>Every scanner within its limits.</p>"
    return ("<h2>Scanner stability</h2><table id='alerts'><thead><tr><th>site</th>"
            "<th>scanner</th><th>metric</th><th>value</th><th>z</th><th>since</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _studies(session: SessionDep, principal: Principal) -> str:
    studies = list(session.scalars(select(Study).where(principal.site_filter(Study.site))
                                   .order_by(Study.received_at.desc()).limit(200)))
    mosaics: dict[str, list[str]] = defaultdict(list)
    if studies:
        for qc in session.scalars(select(QCResult).where(
                QCResult.study_uid.in_([s.study_uid for s in studies]))):
            study = next(s for s in studies if s.study_uid == qc.study_uid)
            key = (qc.report or {}).get("mosaic")
            if qc.revision == study.revision and key:
                mosaics[qc.study_uid].append(
                    f"<a class='mosaic' href='/api/v1/qc/reports/{escape(key[3:])}'>"
                    f"{escape(qc.series_type)}</a>")
    rows = "".join(
        f"<tr class='study status-{escape(s.compliance_status or 'pending')}' "
        f"data-study='{escape(s.study_uid)}'><td>{escape(s.study_uid)}</td>"
        f"<td>{escape(s.site)}</td><td>{escape(s.scanner)}</td>"
        f"<td>{escape(s.subject_id or '')}</td><td>{s.revision}</td>"
        f"<td class='compliance'>{escape(s.compliance_status or 'pending')}</td>"
        f"<td class='qc'>{escape(s.qc_status or 'pending')}</td>"
        f"<td class='harmonization'>{escape(s.harmonization_status or 'pending')}</td>"
        f"<td>{' '.join(mosaics.get(s.study_uid, []))}</td></tr>"
        for s in studies)
    return ("<h2>Studies</h2><table id='studies'><thead><tr><th>study</th><th>site</th>"
            "<th>scanner</th><th>subject</th><th>revision</th><th>compliance</th><th>QC</th>"
            f"<th>harmonization</th><th>QC mosaics</th></tr></thead><tbody>{rows}</tbody>"
            "</table>")


def _phantom_trends(session: SessionDep, principal: Principal) -> str:
    series: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in session.scalars(select(PhantomMeasurement).where(
            principal.site_filter(PhantomMeasurement.site))
            .order_by(PhantomMeasurement.measured_at, PhantomMeasurement.id)):
        for metric, value in (row.metrics or {}).items():
            if value is not None:
                series[(row.scanner, metric)].append(float(value))
    plots = "".join(_plot(scanner, metric, values)
                    for (scanner, metric), values in sorted(series.items()))
    return f"<h2>Phantom trends</h2><div id='phantom-trends'>{plots}</div>"


def _plot(scanner: str, metric: str, values: list[float], width: int = 320,
          height: int = 120) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = (width - 20) / max(len(values) - 1, 1)
    points = " ".join(f"{10 + i * step:.1f},{height - 10 - (v - low) / span * (height - 30):.1f}"
                      for i, v in enumerate(values))
    return (f"<svg class='trend' data-scanner='{escape(scanner)}' data-metric='{escape(metric)}'"
            f" width='{width}' height='{height}' role='img'><title>{escape(scanner)} "
            f"{escape(metric)}</title><text x='10' y='14' font-size='12'>{escape(scanner)} · "
            f"{escape(metric)} (last {values[-1]:.4g})</text><polyline fill='none' "
            f"stroke='#2a6' stroke-width='2' points='{points}'/></svg>")
