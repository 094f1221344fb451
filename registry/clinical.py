"""Clinical data: the data dictionary and the all-or-nothing import of subject variables.

A dictionary (YAML list or CSV with a header) declares each variable's `type`
(int, float, str, category, date), `unit`, `allowed` values (category; `|`
separated in CSV), `min` and `max`. An import file is a CSV with `site`,
`subject_id` (or BIDS `participant_id`) and one column per variable; every bad
cell is reported with its row (the header is row 1) and column, and a file
with any error imports nothing.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from registry.models import DictionaryVariable
from registry.store import ensure_subject

TYPES = ("int", "float", "str", "category", "date")
MISSING = {"", "n/a", "na"}
ID_COLUMNS = ("site", "subject_id", "participant_id")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


class DictionaryError(ValueError):
    """An invalid data dictionary; the message names the entry."""


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    unit: str | None = None
    allowed: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    description: str | None = None

    def parse(self, raw: str) -> Any:
        """The typed value of one cell (raises ValueError with a readable message)."""
        text = raw.strip()
        value: Any
        if self.type == "int":
            value = int(text)
        elif self.type == "float":
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{text!r} is not a finite number")
        elif self.type == "date":
            value = date.fromisoformat(text).isoformat()
        else:
            value = text
        if self.allowed is not None and str(value) not in self.allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(self.allowed)}")
        if isinstance(value, int | float):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{value} is below the minimum {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{value} is above the maximum {self.maximum:g}")
        return value


@dataclass(frozen=True)
class CellError:
    row: int
    column: str
    message: str


@dataclass
class ImportResult:
    subjects: int = 0
    values: int = 0
    errors: list[CellError] = field(default_factory=list)


def parse_dictionary(text: str) -> list[Variable]:
    """A dictionary from YAML (a list, or `{variables: [...]}`) or CSV text."""
    stripped = text.lstrip()
    entries: list[dict[str, Any]]
    if stripped.startswith(("variable,", "variable;", "\ufeffvariable")):
        entries = [dict(row) for row in csv.DictReader(io.StringIO(stripped.lstrip("\ufeff")))]
    else:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DictionaryError(f"not YAML or CSV: {exc}") from exc
        if isinstance(loaded, dict):
            loaded = loaded.get("variables")
        if not isinstance(loaded, list):
            raise DictionaryError("a dictionary is a list of variables")
        entries = loaded
    variables = [_variable(position, entry) for position, entry in enumerate(entries, 1)]
    names = [v.name for v in variables]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DictionaryError(f"duplicate variable(s): {', '.join(duplicates)}")
    if not variables:
        raise DictionaryError("the dictionary declares no variable")
    return variables


def _variable(position: int, entry: Any) -> Variable:
    if not isinstance(entry, dict):
        raise DictionaryError(f"entry {position}: not a mapping")
    name = str(entry.get("variable") or entry.get("name") or "").strip()
    if not _NAME.match(name) or name in ID_COLUMNS:
        raise DictionaryError(f"entry {position}: invalid variable name {name!r}")
    kind = str(entry.get("type") or "").strip()
    if kind not in TYPES:
        raise DictionaryError(f"{name}: type must be one of {', '.join(TYPES)}")
    allowed = entry.get("allowed") or entry.get("allowed_values")
    if isinstance(allowed, str):
        allowed = [a for a in (part.strip() for part in allowed.split("|")) if a]
    if kind == "category" and not allowed:
        raise DictionaryError(f"{name}: a category needs allowed values")
    try:
        minimum = _number(entry.get("min"))
        maximum = _number(entry.get("max"))
    except ValueError as exc:
        raise DictionaryError(f"{name}: min/max must be numbers") from exc
    return Variable(
        name=name, type=kind, unit=_optional(entry.get("unit")),
        allowed=tuple(str(a) for a in allowed) if allowed else None,
        minimum=minimum, maximum=maximum, description=_optional(entry.get("description")),
    )


def _number(value: Any) -> float | None:
    return None if value is None or str(value).strip() == "" else float(value)


def _optional(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def load_stored_dictionary(session: Session) -> list[Variable]:
    return [
        Variable(name=row.variable, type=row.type, unit=row.unit,
                 allowed=tuple(row.allowed) if row.allowed else None,
                 minimum=row.minimum, maximum=row.maximum, description=row.description)
        for row in session.scalars(select(DictionaryVariable).order_by(DictionaryVariable.variable))
    ]


def store_dictionary(session: Session, variables: Iterable[Variable]) -> None:
    """Replace the dictionary in force (values already imported are kept)."""
    session.execute(delete(DictionaryVariable))
    for v in variables:
        session.add(DictionaryVariable(
            variable=v.name, type=v.type, unit=v.unit,
            allowed=list(v.allowed) if v.allowed else None,
            minimum=v.minimum, maximum=v.maximum, description=v.description,
        ))


def validate_rows(
    text: str, variables: list[Variable], *, allowed_sites: Collection[str] | None
) -> tuple[list[tuple[str, str, dict[str, Any]]], list[CellError]]:
    """(site, subject id, values) per row and every error; `allowed_sites` None = any."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    by_name = {v.name: v for v in variables}
    errors = [CellError(1, h, "not in the data dictionary")
              for h in header if h not in by_name and h not in ID_COLUMNS]
    id_column = "subject_id" if "subject_id" in header else "participant_id"
    for required in ("site", id_column):
        if required not in header:
            errors.append(CellError(1, required, "required column missing"))
    if errors:
        return [], errors
    rows: list[tuple[str, str, dict[str, Any]]] = []
    seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(reader, start=2):
        cells = {(k or "").strip(): (v if isinstance(v, str) else "") for k, v in raw.items()}
        if None in raw:
            errors.append(CellError(number, "", "more cells than header columns"))
            continue
        site = cells.get("site", "").strip()
        subject = cells.get(id_column, "").strip().removeprefix("sub-")
        if not site:
            errors.append(CellError(number, "site", "empty"))
        elif allowed_sites is not None and site not in allowed_sites:
            errors.append(CellError(number, "site", f"site {site!r} is not yours to import"))
        if not subject:
            errors.append(CellError(number, id_column, "empty"))
        elif (site, subject) in seen:
            errors.append(CellError(number, id_column,
                                    f"subject already on row {seen[(site, subject)]}"))
        seen[(site, subject)] = number
        values: dict[str, Any] = {}
        for name, cell in cells.items():
            if name in ID_COLUMNS or cell.strip().lower() in MISSING:
                continue
            try:
                values[name] = by_name[name].parse(cell)
            except ValueError as exc:
                errors.append(CellError(number, name, _readable(exc, by_name[name])))
        rows.append((site, subject, values))
    return rows, errors


def _readable(exc: ValueError, variable: Variable) -> str:
    message = str(exc)
    if message.startswith(("invalid literal", "could not convert", "Invalid isoformat")):
        return f"not a valid {variable.type}"
    return message


def import_clinical(
    session: Session, text: str, variables: list[Variable], *,
    allowed_sites: Collection[str] | None,
) -> ImportResult:
    """Validate every row, then write all of them in the caller's transaction, or none."""
    rows, errors = validate_rows(text, variables, allowed_sites=allowed_sites)
    if errors:
        return ImportResult(errors=errors)
    result = ImportResult()
    for site, subject_id, values in rows:
        subject = ensure_subject(session, site=site, subject_id=subject_id)
        subject.clinical = {**(subject.clinical or {}), **values}
        result.subjects += 1
        result.values += len(values)
    return result
