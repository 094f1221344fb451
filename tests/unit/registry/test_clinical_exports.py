"""Clinical import (API and CLI) against the dictionary, all or nothing; exports; the
missing-scan flag."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry.clinical import DictionaryError, parse_dictionary
from registry.missing import flag_missing_series
from registry.models import Subject, utcnow
from services.cli import main
from services.config import parse_config
from tests.unit.registry.api_support import DICTIONARY, MILAN, Seeded

GOOD = """site,subject_id,age_years,diagnosis,moca,visit_date
milan,subjmi1,67,MCI,24.5,2026-01-03
milan,subjmi2,71,AD,,2026-01-04
"""
BAD = """site,subject_id,age_years,diagnosis,moca,shoe_size
milan,subjmi1,sixty,XX,31,42
"""


def clinical(sessions: sessionmaker[Session]) -> dict[str, dict[str, object]]:
    with sessions() as session:
        return {s.subject_id: s.clinical for s in session.scalars(select(Subject))}


async def test_import_then_exports(seeded: Seeded) -> None:
    files = {"file": ("clinical.csv", GOOD, "text/csv")}
    done = await seeded.client.post("/api/v1/clinical/import", files=files,
                                    headers=seeded.auth("milan-manager"))
    assert done.status_code == 200, done.text
    assert done.json() == {"subjects": 2, "values": 7}
    assert clinical(seeded.sessions)["subjmi1"] == {
        "age_years": 67, "diagnosis": "MCI", "moca": 24.5, "visit_date": "2026-01-03"}
    features = await seeded.client.get("/api/v1/exports/features.csv",
                                       headers=seeded.auth("milan"))
    rows = list(csv.DictReader(io.StringIO(features.text)))
    assert [r["study_uid"] for r in rows] == [MILAN]
    assert rows[0]["gm_volume"] == "640.0" and rows[0]["raw_t1w_gm_volume"] == "650.0"
    assert rows[0]["diagnosis"] == "MCI" and rows[0]["subject_id"] == "subjmi1"
    tsv = await seeded.client.get("/api/v1/exports/participants.tsv",
                                  headers=seeded.auth("milan"))
    lines = [line.split("\t") for line in tsv.text.splitlines()]
    assert lines[0][:4] == ["participant_id", "site", "sex", "age"]
    assert lines[1][:4] == ["sub-subjmi1", "milan", "F", "042Y"]
    assert lines[2][lines[0].index("moca")] == "n/a"
    assert "naples" not in tsv.text and "naples" not in features.text


async def test_bad_rows_rejected_with_row_and_column_nothing_imported(seeded: Seeded) -> None:
    before = clinical(seeded.sessions)
    files = {"file": ("clinical.csv", BAD, "text/csv")}
    rejected = await seeded.client.post("/api/v1/clinical/import", files=files,
                                        headers=seeded.auth("admin"))
    assert rejected.status_code == 400
    errors = {(e["row"], e["column"]) for e in rejected.json()["errors"]}
    assert errors == {(1, "shoe_size")}
    files = {"file": ("c.csv", BAD.replace(",shoe_size", "").replace(",42", ""), "text/csv")}
    rejected = await seeded.client.post("/api/v1/clinical/import", files=files,
                                        headers=seeded.auth("admin"))
    errors = {(e["row"], e["column"]) for e in rejected.json()["errors"]}
    assert errors == {(2, "age_years"), (2, "diagnosis"), (2, "moca")}
    mixed = GOOD + "milan,subjmi3,200,HC,20,2026-01-05\n"
    rejected = await seeded.client.post("/api/v1/clinical/import",
                                        files={"file": ("c.csv", mixed, "text/csv")},
                                        headers=seeded.auth("admin"))
    assert [(e["row"], e["column"]) for e in rejected.json()["errors"]] == [(4, "age_years")]
    assert clinical(seeded.sessions) == before


async def test_site_manager_imports_only_its_sites_and_viewer_not_at_all(seeded: Seeded
                                                                          ) -> None:
    other = GOOD.replace("milan,subjmi2", "naples,subjna1")
    rejected = await seeded.client.post("/api/v1/clinical/import",
                                        files={"file": ("c.csv", other, "text/csv")},
                                        headers=seeded.auth("milan-manager"))
    assert rejected.status_code == 400
    assert [(e["row"], e["column"]) for e in rejected.json()["errors"]] == [(3, "site")]
    viewer = await seeded.client.post("/api/v1/clinical/import",
                                      files={"file": ("c.csv", GOOD, "text/csv")},
                                      headers=seeded.auth("milan"))
    assert viewer.status_code == 403


async def test_dictionary_upload_is_admin_only(seeded: Seeded) -> None:
    new = "variable,type,unit,allowed,min,max\nbmi,float,kg/m2,,10,60\n"
    upload = {"file": ("dict.csv", new, "text/csv")}
    assert (await seeded.client.put("/api/v1/clinical/dictionary", files=upload,
                                    headers=seeded.auth("milan-manager"))).status_code == 403
    done = await seeded.client.put("/api/v1/clinical/dictionary", files=upload,
                                   headers=seeded.auth("admin"))
    assert done.status_code == 200 and done.json()[0]["variable"] == "bmi"
    listed = await seeded.client.get("/api/v1/clinical/dictionary", headers=seeded.auth("milan"))
    assert [v["variable"] for v in listed.json()] == ["bmi"]


def test_dictionary_errors_name_the_entry() -> None:
    assert [v.name for v in parse_dictionary(DICTIONARY)] == [
        "age_years", "diagnosis", "moca", "visit_date"]
    with pytest.raises(DictionaryError, match="diagnosis: a category needs allowed values"):
        parse_dictionary("- {variable: diagnosis, type: category}")
    with pytest.raises(DictionaryError, match="type must be one of"):
        parse_dictionary("- {variable: x, type: blob}")


def test_cli_token_and_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARMONET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("HARMONET_DATABASE_URL", raising=False)
    assert main(["token", "create", "--site", "milan", "--role", "site-manager"]) == 0
    assert capsys.readouterr().out.strip().startswith("hnt_")
    assert main(["token", "list"]) == 0
    assert capsys.readouterr().out.startswith("1\tsite-manager\tmilan\t")
    assert main(["token", "revoke", "1"]) == 0
    assert main(["token", "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    dictionary, good, bad = tmp_path / "d.yaml", tmp_path / "good.csv", tmp_path / "bad.csv"
    dictionary.write_text(DICTIONARY)
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert main(["registry", "import-clinical", str(bad), "--dictionary", str(dictionary)]) == 1
    assert f"{bad}:1: shoe_size: not in the data dictionary" in capsys.readouterr().err
    assert main(["registry", "import-clinical", str(good), "--dictionary",
                 str(dictionary)]) == 0
    assert "imported 7 values for 2 subjects" in capsys.readouterr().out


async def test_missing_required_series_flagged_after_the_delay(seeded: Seeded) -> None:
    config = parse_config("""
study: T
sites: [{id: milan, scanners: [{id: milan-prisma, ae_titles: [A]}]},
        {id: naples, scanners: [{id: naples-signa, ae_titles: [B]}]}]
protocols:
  - id: core
    series:
      - {type: t1w, required: true}
      - {type: bold, required: true}
      - {type: dwi, required: true}
""", source="test")
    with seeded.sessions.begin() as session:
        early = flag_missing_series(session, config, now=utcnow(), after_hours=24)
    assert early == {}
    with seeded.sessions.begin() as session:
        late = flag_missing_series(session, config, now=utcnow() + timedelta(hours=25),
                                   after_hours=24)
    assert late == {"milan": 1, "naples": 1}
    flagged = await seeded.client.get("/api/v1/studies?missing_series=true",
                                      headers=seeded.auth("milan"))
    assert [(s["study_uid"], s["missing_series"]) for s in flagged.json()["items"]] == [
        (MILAN, ["dwi"])]
    metrics = (await seeded.client.get("/metrics")).text
    assert 'harmonet_registry_studies_missing_series{site="milan"} 1.0' in metrics
