"""The inferred site reference (mrQA-style modal values) and scanner configuration changes.

A site x scanner x series type's reference holds, per parameter, its most frequent value
over that history once at least `min_support` studies carry it (as mrQA infers a
"reference protocol"): a site that always acquires TR 2310 against a protocol's 2300 is told
apart from a one-off operator error. Numbers are compared after rounding to 6 significant
digits (DS strings of the same value written by different software releases), strings
after stripping, lists element-wise. Pure functions: the service keeps the history.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from compliance_service.fingerprint import Fingerprint
from services.events import ConfigurationChange

SIGNIFICANT_DIGITS = 6
# Series identity and study-specific values: no reference is inferred for them.
NOT_REFERENCED = frozenset({"SeriesNumber", "NumberOfVolumes"})
SCANNER_PARAMETERS = ("SoftwareVersions", "DeviceSerialNumber", "ManufacturerModelName")
# Modal acquisition parameters: a change of their reference value is a protocol change on
# the scanner. Descriptions and ImageType are naming, NumberOfVolumes varies with aborted
# runs; these are not configuration.
MODAL_PARAMETERS = (
    "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "SliceThickness",
    "SpacingBetweenSlices", "PixelSpacing", "Rows", "Columns", "AcquisitionMatrix",
    "PixelBandwidth", "MRAcquisitionType", "ScanningSequence", "SequenceVariant",
    "SequenceName", "InPlanePhaseEncodingDirection", "EchoTrainLength",
    "MagneticFieldStrength", "NumberOfSlices", "PhaseEncodingDirection",
    "ParallelReductionFactorInPlane", "MultibandFactor", "PartialFourier",
)


def comparable(value: Any) -> Any:
    """A hashable, rounded form of a fingerprint value (None stays None)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        rounded = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
        return int(rounded) if rounded.is_integer() else rounded
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple):
        return tuple(comparable(item) for item in value)
    return repr(value)


def as_json(value: Any) -> Any:
    return [as_json(item) for item in value] if isinstance(value, tuple) else value


def same_value(a: Any, b: Any) -> bool:
    return a is not None and b is not None and comparable(a) == comparable(b)


def infer_reference(history: Sequence[Fingerprint], *, min_support: int = 3) -> Fingerprint:
    """Per parameter, the most frequent value in `history` (oldest first) supported by at
    least `min_support` studies; a tie goes to the value seen most recently."""
    counts: dict[str, Counter[Any]] = {}
    last_seen: dict[tuple[str, Any], int] = {}
    for position, fingerprint in enumerate(history):
        for name, value in fingerprint.items():
            key = comparable(value)
            if name in NOT_REFERENCED or key is None:
                continue
            counts.setdefault(name, Counter())[key] += 1
            last_seen[(name, key)] = position
    reference: Fingerprint = {}
    for name in sorted(counts):
        value, support = max(counts[name].items(),
                             key=lambda item: (item[1], last_seen[(name, item[0])]))
        if support >= min_support:
            reference[name] = as_json(value)
    return reference


def configuration_changes(
    previous: Fingerprint | None, current: Fingerprint, *, series_type: str | None
) -> list[ConfigurationChange]:
    """What changed from `previous` to `current` (two references, or two fingerprints).

    Scanner-level parameters (software, serial, model) come with `series_type` None;
    modal acquisition parameters with `series_type`. A parameter unknown on either side
    is not a change: a first sighting or a missing attribute is no reconfiguration.
    """
    if previous is None:
        return []
    changes = [
        ConfigurationChange(parameter=name, previous=previous[name], current=current[name])
        for name in SCANNER_PARAMETERS
        if _changed(previous.get(name), current.get(name))
    ]
    changes += [
        ConfigurationChange(parameter=name, previous=previous[name], current=current[name],
                            series_type=series_type)
        for name in MODAL_PARAMETERS
        if _changed(previous.get(name), current.get(name))
    ]
    return changes


def _changed(before: Any, after: Any) -> bool:
    return before is not None and after is not None and comparable(before) != comparable(after)
