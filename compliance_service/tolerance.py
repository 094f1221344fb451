"""When an acquired value meets an expected one: the tolerance semantics of the protocol.

- Numbers: `|actual - expected| <= tolerance`; a number tolerance is absolute, a string
  `"N%"` is N percent of `|expected|`; no tolerance means equal (up to float noise, 1e-12 relative).
- Lists (PixelSpacing, AcquisitionMatrix): same length, element by element, with the same
  tolerance for numeric elements.
- Strings (categorical, e.g. CS values, PhaseEncodingDirection): equal after stripping
  surrounding spaces, case-insensitively (DICOM CS values are upper case by definition, so
  this only forgives a config written as "row" for "ROW"); a tolerance is ignored.
  A multi-valued string "GR\\IR" equals the list ["GR", "IR"].
- Anything else: plain equality. Nothing here raises: an incomparable pair simply differs.
"""

from __future__ import annotations

import math
from typing import Any

_FLOAT_NOISE = 1e-12  # relative: DS parsing and % arithmetic, not a tolerance


def tolerance_amount(expected: float, tolerance: float | str | None) -> float:
    """The absolute tolerance around `expected` (0 when exact)."""
    if tolerance is None or isinstance(tolerance, bool):
        return 0.0
    if isinstance(tolerance, str):
        text = tolerance.strip()
        try:
            if text.endswith("%"):
                return abs(expected) * float(text[:-1]) / 100.0
            return abs(float(text))
        except ValueError:
            return 0.0
    return abs(float(tolerance))


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def within_tolerance(actual: Any, expected: Any, tolerance: float | str | None = None) -> bool:
    """Whether `actual` meets `expected` under `tolerance` (see the module docstring)."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, list | tuple) or isinstance(actual, list | tuple):
        return _lists_match(_as_list(actual), _as_list(expected), tolerance)
    if is_number(expected):
        number = _as_number(actual)
        return number is not None and _numbers_match(number, float(expected), tolerance)
    if isinstance(expected, str):
        if is_number(actual):
            number = _as_number(expected)
            return number is not None and _numbers_match(float(actual), number, None)
        return isinstance(actual, str) and _text(actual) == _text(expected)
    try:
        return bool(actual == expected)
    except Exception:  # exotic values: incomparable means different
        return False


def _numbers_match(actual: float, expected: float, tolerance: float | str | None) -> bool:
    if not (math.isfinite(actual) and math.isfinite(expected)):
        return False
    allowed = tolerance_amount(expected, tolerance)
    if not math.isfinite(allowed):
        return False
    noise = _FLOAT_NOISE * max(1.0, abs(expected), abs(actual))
    return abs(actual - expected) <= allowed + noise


def _lists_match(actual: list[Any] | None, expected: list[Any] | None, tol: Any) -> bool:
    if actual is None or expected is None or len(actual) != len(expected):
        return False
    return all(within_tolerance(a, e, tol) for a, e in zip(actual, expected, strict=True))


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        return value.split("\\")
    return None


def _as_number(value: Any) -> float | None:
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _text(value: str) -> str:
    return value.strip().casefold()
