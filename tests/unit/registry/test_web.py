"""The human page: token once → cookie; studies with status classes; phantom trends."""

from __future__ import annotations

from tests.unit.registry.api_support import MILAN, NAPLES, Seeded
from tests.unit.registry.conftest import Pipeline


async def test_page_needs_a_token_and_keeps_to_its_sites(seeded: Seeded) -> None:
    assert (await seeded.client.get("/ui/")).status_code == 401
    assert (await seeded.client.get("/ui/?token=hnt_bad")).status_code == 401
    signed_in = await seeded.client.get(f"/ui/?token={seeded.tokens['milan']}")
    assert signed_in.status_code == 303 and "httponly" in signed_in.headers["set-cookie"].lower()
    page = await seeded.client.get("/ui/")
    assert page.status_code == 200
    assert 'id="studies"' in page.text.replace("'", '"')
    assert MILAN in page.text and NAPLES not in page.text
    assert "status-compliant" in page.text and "id='phantom-trends'" in page.text
    assert "data-scanner='milan-prisma'" in page.text and "naples-signa" not in page.text
    mosaic = page.text.split("class='mosaic' href='")[1].split("'")[0]
    assert (await seeded.client.get(mosaic)).status_code == 200


async def test_out_of_control_scanners_are_listed_for_their_own_site_until_back(
    seeded: Seeded, pipeline: Pipeline
) -> None:
    from services.events import ScannerStabilityAlert, make_event

    await seeded.client.get(f"/ui/?token={seeded.tokens['naples']}")
    page = (await seeded.client.get("/ui/")).text
    assert "<tr class='alert' data-alert='naples-signa'>" in page
    assert "snr" in page.split("id='alerts'")[1].split("</table>")[0]

    await seeded.client.get(f"/ui/?token={seeded.tokens['milan']}")
    page = (await seeded.client.get("/ui/")).text
    assert "data-alert" not in page and "Every scanner within its limits" in page

    back = ScannerStabilityAlert(site="naples", scanner="naples-signa", metric="snr",
                                 state="back_in_control", value=99.0, zscore=0.2,
                                 study_uid="2.2.10")
    await pipeline.send(make_event("scanner.stability.alert", back, source="test/qc",
                                   subject="naples-signa",
                                   id_parts=("naples-signa", "snr", "back", "2.2.10")))
    await seeded.client.get(f"/ui/?token={seeded.tokens['naples']}")
    page = (await seeded.client.get("/ui/")).text
    assert "data-alert" not in page
