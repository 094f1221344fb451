"""The REST API: answers, site scoping on every endpoint, 401s, roles, audit log."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from registry.models import AuditEntry
from tests.unit.registry import factories as f
from tests.unit.registry.api_support import MILAN, NAPLES, Seeded

# Site B (naples) ids, for the matrix test: every path parameter of every endpoint.
NAPLES_IDS = {
    "study_uid": NAPLES, "series_uid": f.series_uid(NAPLES, "t1w"), "subject_id": "subjna1",
    "scanner_id": "naples-signa", "site_id": "naples",
    "revision": "r1", "filename": "mosaic.png",
}
NAPLES_MARKERS = ("naples", NAPLES, "subjna1")


def api_routes(seeded: Seeded) -> list[tuple[str, str, set[str]]]:
    """Every operation of the OpenAPI document under /api/v1, with its query parameters."""
    paths = seeded.app.openapi()["paths"]
    return [
        (method.upper(), path,
         {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"})
        for path, operations in sorted(paths.items()) if path.startswith("/api/v1")
        for method, operation in sorted(operations.items())
    ]


def fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: NAPLES_IDS[m.group(1)], path)


async def test_study_list_and_detail(seeded: Seeded) -> None:
    page = (await seeded.client.get("/api/v1/studies", headers=seeded.auth("milan"))).json()
    assert page["total"] == 1 and [s["study_uid"] for s in page["items"]] == [MILAN]
    assert page["items"][0]["compliance_status"] == "compliant"
    everything = (await seeded.client.get("/api/v1/studies", headers=seeded.auth("admin"))).json()
    assert everything["total"] == 2
    detail = (await seeded.client.get(f"/api/v1/studies/{MILAN}",
                                      headers=seeded.auth("milan"))).json()
    assert [s["series_type"] for s in detail["series"]] == ["t1w", "bold"]
    assert detail["harmonized"][0]["features"]["gm_volume"] == 640.0
    assert detail["revisions"][0]["processed_at"] is not None


async def test_pagination_and_filters(seeded: Seeded) -> None:
    admin = seeded.auth("admin")
    first = (await seeded.client.get("/api/v1/studies?limit=1", headers=admin)).json()
    second = (await seeded.client.get("/api/v1/studies?limit=1&offset=1", headers=admin)).json()
    assert first["total"] == second["total"] == 2
    assert {first["items"][0]["study_uid"], second["items"][0]["study_uid"]} == {MILAN, NAPLES}
    naples = (await seeded.client.get("/api/v1/studies?site=naples", headers=admin)).json()
    assert [s["study_uid"] for s in naples["items"]] == [NAPLES]
    series = (await seeded.client.get(f"/api/v1/series?study_uid={MILAN}&series_type=bold",
                               headers=admin)).json()
    assert series["total"] == 1
    phantom = (await seeded.client.get("/api/v1/phantom?scanner=naples-signa",
                                       headers=admin)).json()
    assert phantom["total"] == 1 and phantom["items"][0]["metrics"]["snr"] == 100.0
    scanner = (await seeded.client.get("/api/v1/scanners/naples-signa", headers=admin)).json()
    assert scanner["changes"][0]["current"] == "syngo MR XA31"
    for path in ("/api/v1/sites", "/api/v1/scanners", "/api/v1/subjects", "/api/v1/compliance",
                 "/api/v1/qc", "/api/v1/alerts", "/api/v1/harmonized", "/api/v1/audit"):
        body = (await seeded.client.get(path + "?limit=1", headers=admin)).json()
        assert body["limit"] == 1 and len(body["items"]) <= 1, path


async def test_site_a_token_never_reads_site_b(seeded: Seeded) -> None:
    """Every endpoint x site B's ids (in the path, or `site=naples`) with milan tokens:
    all denied; and no answer of any endpoint carries a naples row."""
    probes, denied = 0, 0
    for method, path, query_parameters in api_routes(seeded):
        for who in ("milan", "milan-manager"):
            urls = [fill(path)]
            if "site" in query_parameters:
                urls.append(fill(path) + "?site=naples")
            for url in urls:
                response = await seeded.client.request(method, url, headers=seeded.auth(who))
                assert not any(m in response.text for m in NAPLES_MARKERS), (method, url)
                if url != path:  # carries a naples id
                    probes += 1
                    denied += response.status_code in (403, 404)
                    assert response.status_code in (403, 404), (method, url, response.text)
    assert probes > 30 and denied == probes


async def test_no_token_or_bad_token_is_401(seeded: Seeded) -> None:
    for method, path, _ in api_routes(seeded):
        url = fill(path)
        for headers in ({}, {"Authorization": "Bearer hnt_not-a-token"},
                        {"Authorization": "Basic dXNlcjpwYXNz"}):
            response = await seeded.client.request(method, url, headers=headers)
            assert response.status_code == 401, (method, url, headers, response.text[:200])
            assert response.headers["www-authenticate"] == "Bearer"


async def test_qc_report_is_site_scoped(seeded: Seeded) -> None:
    key = f"qc/milan/{MILAN}/r1/{f.series_uid(MILAN, 't1w')}/mosaic.png"
    got = await seeded.client.get(f"/api/v1/qc/reports/{key.removeprefix('qc/')}",
                                  headers=seeded.auth("milan"))
    assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
    assert got.headers["content-type"] == "image/png"
    naples_key = f"naples/{NAPLES}/r1/{f.series_uid(NAPLES, 't1w')}/mosaic.png"
    other = await seeded.client.get(f"/api/v1/qc/reports/{naples_key}",
                              headers=seeded.auth("milan"))
    assert other.status_code == 404


async def test_audit_log_records_reads_and_is_admin_only(seeded: Seeded) -> None:
    await seeded.client.get("/api/v1/studies", headers=seeded.auth("milan"))
    await seeded.client.get("/api/v1/studies")
    denied = await seeded.client.get("/api/v1/audit", headers=seeded.auth("milan"))
    assert denied.status_code == 403
    entries = (await seeded.client.get("/api/v1/audit?limit=10",
                                       headers=seeded.auth("admin"))).json()
    actions = [(e["action"], e["path"], e["status"], e["role"]) for e in entries["items"]]
    assert ("read", "/api/v1/studies", 200, "viewer") in actions
    assert ("denied", "/api/v1/studies", 401, None) in actions
    assert ("denied", "/api/v1/audit", 403, "viewer") in actions
    with seeded.sessions() as session:
        assert session.scalars(select(AuditEntry)).first() is not None


async def test_health_ready_metrics(seeded: Seeded) -> None:
    assert (await seeded.client.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await seeded.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    assert "harmonet_events_consumed_total" in (await seeded.client.get("/metrics")).text


async def test_audit_log_is_append_only_on_postgresql(seeded: Seeded) -> None:
    from sqlalchemy import delete, update
    from sqlalchemy.exc import DBAPIError

    await seeded.client.get("/api/v1/studies", headers=seeded.auth("milan"))
    await seeded.client.get("/api/v1/audit", headers=seeded.auth("admin"))  # flushes
    with seeded.sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("the append-only trigger is PostgreSQL's")
        for statement in (update(AuditEntry).values(status=200), delete(AuditEntry)):
            with pytest.raises(DBAPIError, match="append-only"):
                session.execute(statement)
            session.rollback()
