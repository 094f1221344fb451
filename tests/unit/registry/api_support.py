"""A seeded registry behind its FastAPI app: two sites, tokens of every role."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from registry.api import RegistryState, create_app
from registry.auth import create_token
from services.blobstore import FileBlobStore
from tests.unit.registry import factories as f
from tests.unit.registry.conftest import Pipeline

DICTIONARY = """\
- {variable: age_years, type: int, unit: years, min: 18, max: 100}
- {variable: diagnosis, type: category, allowed: [HC, MCI, AD]}
- {variable: moca, type: float, min: 0, max: 30}
- {variable: visit_date, type: date}
"""
MILAN, NAPLES = "1.1.1", "2.2.2"


@dataclass
class Seeded:
    client: httpx.AsyncClient
    app: FastAPI
    tokens: dict[str, str]
    sessions: sessionmaker[Session]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def seed(pipeline: Pipeline) -> None:
    await pipeline.send(*f.study_events(MILAN, site="milan", subject="subjmi1"))
    await pipeline.send(*f.study_events(NAPLES, site="naples", subject="subjna1"),
                        f.phantom("2.2.9", site="naples"), f.alert("2.2.9", site="naples"),
                        f.configuration_changed(NAPLES, site="naples"),
                        f.phantom("1.1.9", site="milan"))


def build(sessions: sessionmaker[Session], tmp_path: Path) -> Seeded:
    blobs = FileBlobStore(tmp_path / "blobs")
    for site, uid in (("milan", MILAN), ("naples", NAPLES)):
        key = f"qc/{site}/{uid}/r1/{f.series_uid(uid, 't1w')}/mosaic.png"
        blobs.put_new(key, b"\x89PNG fake " + site.encode())
    dictionary = tmp_path / "dictionary.yaml"
    dictionary.write_text(DICTIONARY)
    with sessions.begin() as session:
        tokens = {
            "milan": create_token(session, sites=["milan"], role="viewer"),
            "naples": create_token(session, sites=["naples"], role="viewer"),
            "milan-manager": create_token(session, sites=["milan"], role="site-manager"),
            "admin": create_token(session, sites=["*"], role="admin"),
        }
    state = RegistryState(sessions=sessions, blobs=blobs, dictionary_path=dictionary,
                          known_sites=frozenset({"milan", "naples"}))
    app = create_app(state)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry")
    return Seeded(client, app, tokens, sessions)
