"""`/api/v1/clinical`: the data dictionary (read: any token; replace: admin) and the CSV
import of subject variables (site-manager for its own sites, admin for any)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, UploadFile
from fastapi.responses import JSONResponse

from registry.api import PrincipalDep, SessionDep, StateDep, require_role
from registry.auth import Principal
from registry.clinical import (
    DictionaryError,
    Variable,
    import_clinical,
    load_stored_dictionary,
    parse_dictionary,
    store_dictionary,
)
from registry.routes import DENIED
from registry.schemas import CellErrorOut, ImportOut, ImportRejected, Problem, VariableOut

router = APIRouter(prefix="/api/v1/clinical", tags=["clinical"], responses=DENIED)
MAX_UPLOAD = 20 * 1024 * 1024
REJECTED: dict[int | str, dict[str, Any]] = {
    400: {"model": ImportRejected, "description": "rows rejected; nothing was imported"},
    409: {"model": Problem, "description": "no data dictionary is configured"},
    413: {"model": Problem},
}


def dictionary_in_force(session: Any, state: Any) -> list[Variable]:
    """The uploaded dictionary, else the file named by HARMONET_CLINICAL_DICTIONARY."""
    stored: list[Variable] = load_stored_dictionary(session)
    if stored:
        return stored
    if state.dictionary_path is not None:
        return parse_dictionary(state.dictionary_path.read_text(encoding="utf-8"))
    return []


def _as_out(variable: Variable) -> VariableOut:
    return VariableOut(variable=variable.name, type=variable.type, unit=variable.unit,
                       allowed=list(variable.allowed) if variable.allowed else None,
                       min=variable.minimum, max=variable.maximum,
                       description=variable.description)


async def _read_text(upload: UploadFile) -> str:
    content = await upload.read(MAX_UPLOAD + 1)
    if len(content) > MAX_UPLOAD:
        raise HTTPException(413, "file larger than 20 MiB")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "the file is not UTF-8 text") from exc


@router.get("/dictionary")
def get_dictionary(session: SessionDep, principal: PrincipalDep, state: StateDep
                   ) -> list[VariableOut]:
    try:
        return [_as_out(v) for v in dictionary_in_force(session, state)]
    except (DictionaryError, OSError) as exc:
        raise HTTPException(409, f"configured dictionary unusable: {exc}") from exc


@router.put("/dictionary", responses={400: {"model": Problem}, 413: {"model": Problem}})
async def put_dictionary(
    file: UploadFile, session: SessionDep,
    principal: Annotated[Principal, Depends(require_role("admin"))],
) -> list[VariableOut]:
    """Replace the data dictionary (YAML or CSV); values already imported are kept."""
    text = await _read_text(file)
    try:
        variables = parse_dictionary(text)
    except DictionaryError as exc:
        raise HTTPException(400, f"invalid dictionary: {exc}") from exc

    def write() -> None:
        store_dictionary(session, variables)
        session.commit()

    await anyio.to_thread.run_sync(write)
    return [_as_out(v) for v in variables]


@router.post("/import", response_model=ImportOut, responses=REJECTED)
async def import_subjects(
    file: UploadFile, session: SessionDep, state: StateDep,
    principal: Annotated[Principal, Depends(require_role("site-manager"))],
) -> Any:
    """Import subject-level variables from a CSV (`site`, `subject_id` and one column per
    dictionary variable). Any bad cell rejects the whole file."""
    text = await _read_text(file)

    def run() -> ImportOut | ImportRejected | Problem:
        try:
            variables = dictionary_in_force(session, state)
        except (DictionaryError, OSError) as exc:
            return Problem(detail=f"configured dictionary unusable: {exc}")
        if not variables:
            return Problem(detail="no data dictionary: upload one or set "
                                  "HARMONET_CLINICAL_DICTIONARY")
        allowed = principal.sites
        if state.known_sites is not None:
            allowed = state.known_sites if allowed is None else allowed & state.known_sites
        result = import_clinical(session, text, variables, allowed_sites=allowed)
        if result.errors:
            session.rollback()
            return ImportRejected(
                detail=f"{len(result.errors)} error(s); nothing imported",
                errors=[CellErrorOut(row=e.row, column=e.column, message=e.message)
                        for e in result.errors[:1000]])
        session.commit()
        return ImportOut(subjects=result.subjects, values=result.values)

    outcome = await anyio.to_thread.run_sync(run)
    if isinstance(outcome, ImportRejected):
        return JSONResponse(outcome.model_dump(), status_code=400)
    if isinstance(outcome, Problem):
        return JSONResponse(outcome.model_dump(), status_code=409)
    return outcome
