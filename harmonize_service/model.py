"""A fitted ComBat model as a versioned JSON artefact (no pickle).

Arrays are stored as {dtype, shape, data}; floats survive the round trip exactly (JSON
numbers written with Python's shortest round-tripping repr; NaN is written as null).
`version` is "sha256:<hex>" of the canonical JSON of everything but `version` and `created`,
so the same fit gives the same version and a tampered file is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from harmonize_service.combat import Array, CombatModel, CombatOptions
from harmonize_service.splines import SplineTerm

FORMAT = "harmonet.combat/1"
# ComBat-GAM models carry smooth terms, which a format-1 reader would silently ignore.
FORMAT_GAM = "harmonet.combat-gam/1"
_FORMATS = (FORMAT, FORMAT_GAM)
_GAM_FIELDS = ("smooth_terms", "smooth_penalty")


class ModelFormatError(ValueError):
    """The text is not a model artefact this version can read."""


def content_version(model: CombatModel) -> str:
    return content_digest(_content(model))


def content_digest(content: dict[str, Any]) -> str:
    """"sha256:<hex>" of the canonical JSON of an artefact's content (every model kind's
    version); NaN and infinities are refused (ValueError), never written."""
    return "sha256:" + hashlib.sha256(_canonical(content).encode()).hexdigest()


def to_json(model: CombatModel, *, created: datetime | None = None) -> str:
    content = _content(model)
    when = (created or datetime.now(UTC)).isoformat()
    version = content_digest(content)
    return json.dumps({"version": version, "created": when, **content}, indent=1, sort_keys=True)


def from_json(text: str) -> CombatModel:
    try:
        document = json.loads(text)
        content = {k: v for k, v in document.items() if k not in ("version", "created")}
        if content.get("format") not in _FORMATS:
            raise ModelFormatError(f"not a {FORMAT} model: format {content.get('format')!r}")
        expected = content_digest(content)
        if document.get("version") != expected:
            raise ModelFormatError("model content does not match its version (edited or corrupt)")
        return _model(content)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"not a readable model artefact: {exc!r}") from exc


def version_of(text: str) -> str:
    """The version recorded in an artefact, without rebuilding the arrays."""
    return str(json.loads(text)["version"])


def _canonical(content: dict[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _content(model: CombatModel) -> dict[str, Any]:
    content: dict[str, Any] = {"format": FORMAT_GAM if model.smooth_terms else FORMAT}
    for field in fields(model):
        value = getattr(model, field.name)
        if field.name in _GAM_FIELDS and not model.smooth_terms:
            continue  # a linear model's content (hence version) is the same as before GAM
        if field.name == "smooth_terms":
            content[field.name] = [_encode_term(term) for term in value]
        elif isinstance(value, np.ndarray):
            content[field.name] = _encode_array(value)
        elif isinstance(value, CombatOptions):
            content[field.name] = {f.name: getattr(value, f.name) for f in fields(value)}
        else:
            content[field.name] = _lists(value)
    return content


def _model(content: dict[str, Any]) -> CombatModel:
    values: dict[str, Any] = {}
    for field in fields(CombatModel):
        if field.name in _GAM_FIELDS and content["format"] == FORMAT:
            continue
        raw = content[field.name]
        if field.name == "smooth_terms":
            values[field.name] = tuple(_decode_term(term) for term in raw)
        elif field.name == "options":
            values[field.name] = CombatOptions(**raw)
        elif field.name == "categorical":
            values[field.name] = tuple((str(n), tuple(levels)) for n, levels in raw)
        elif isinstance(raw, dict):
            values[field.name] = _decode_array(raw)
        elif isinstance(raw, list):
            values[field.name] = tuple(raw)
        else:
            values[field.name] = raw
    return CombatModel(**values)


def _encode_term(term: SplineTerm) -> dict[str, Any]:
    return {"name": term.name, "degree": term.degree, "knots": _encode_array(term.knots)}


def _decode_term(raw: dict[str, Any]) -> SplineTerm:
    return SplineTerm(name=str(raw["name"]), knots=_decode_array(raw["knots"]),
                      degree=int(raw["degree"]))


def _lists(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    return value


def _encode_array(array: Array) -> dict[str, Any]:
    flat = [_encode_float(x) for x in array.astype(np.float64).ravel().tolist()]
    return {"dtype": "float64", "shape": list(array.shape), "data": flat}


def _encode_float(value: float) -> float | str | None:
    # JSON has no NaN or infinity: NaN (a hyperparameter not estimated) is null, inf (a
    # point-mass prior) is a string.
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _decode_array(raw: dict[str, Any]) -> Array:
    if raw["dtype"] != "float64":
        raise ModelFormatError(f"unsupported array dtype {raw['dtype']!r}")
    data = [math.nan if x is None else float(x) for x in raw["data"]]
    return np.array(data, dtype=np.float64).reshape(raw["shape"])
