"""The vendor-neutral acquisition fingerprint of one series, from a few of its headers.

Keys are DICOM keywords (or keyword-like names for derived values); a value is a JSON
number, string or list, or None when the series does not say (unknown, never a guess).
Multi-valued strings (ScanningSequence, ImageType, ...) keep DICOM's backslash form.
Enhanced MR (multi-frame) values come from the first frame's functional groups, else the
shared ones (EchoTime <- EffectiveEchoTime, InversionTime <- InversionTimes[0],
SequenceName <- PulseSequenceName, AcquisitionMatrix <- MR FOV Geometry steps).

PhaseEncodingDirection is BIDS-style, in the voxel axes dcm2niix writes by default (its
NIfTI rows run opposite to DICOM's): ROW -> i, COL -> j; PhaseEncodingPolarity is the
vendor's own flag (+1 toward increasing DICOM index), so COL with +1 is "j-", COL with
-1 is "j", ROW with +1 is "i", ROW with -1 is "i-". Without a known polarity: None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from compliance_service.vendors import VendorValues, normalise_manufacturer, vendor_values

Fingerprint = dict[str, Any]

FLOATS = ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "SliceThickness",
          "SpacingBetweenSlices", "PixelBandwidth", "MagneticFieldStrength")
INTS = ("Rows", "Columns", "EchoTrainLength", "SeriesNumber")
TEXTS = ("MRAcquisitionType", "ScanningSequence", "SequenceVariant",
         "InPlanePhaseEncodingDirection", "ManufacturerModelName", "SoftwareVersions",
         "DeviceSerialNumber", "SeriesDescription", "ProtocolName", "SequenceName", "ImageType")
_ENHANCED_ALIASES = {"EchoTime": "EffectiveEchoTime", "InversionTime": "InversionTimes",
                     "SequenceName": "PulseSequenceName"}
_SAME_POSITION_MM = 1e-3


def series_fingerprint(headers: Sequence[Dataset], *, instance_count: int) -> Fingerprint:
    """The fingerprint of one series from 1-3 of its headers (any order, no pixel data)."""
    ordered = sorted(headers, key=_instance_number)
    if not ordered:
        return {}
    first = ordered[0]
    lookup = _Lookup(first)
    fingerprint: Fingerprint = {key: _to_float(lookup.get(key)) for key in FLOATS}
    fingerprint.update({key: _to_int(lookup.get(key)) for key in INTS})
    fingerprint.update({key: _to_text(lookup.get(key)) for key in TEXTS})
    fingerprint["PixelSpacing"] = _float_list(lookup.get("PixelSpacing"), length=2)
    fingerprint["AcquisitionMatrix"] = _acquisition_matrix(lookup)
    manufacturer = normalise_manufacturer(_to_text(lookup.get("Manufacturer")))
    fingerprint["Manufacturer"] = manufacturer
    vendor = vendor_values(first, manufacturer)
    fingerprint.update(_derived(lookup, vendor))
    slices, volumes = _counts(ordered, instance_count=instance_count, vendor=vendor)
    fingerprint["NumberOfSlices"], fingerprint["NumberOfVolumes"] = slices, volumes
    return fingerprint


class _Lookup:
    """Attribute lookup: the dataset itself, then (Enhanced MR) frame 1's functional groups,
    then the shared ones; each group macro is a one-item sequence of attributes."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.enhanced = "PerFrameFunctionalGroupsSequence" in ds or (
            "SharedFunctionalGroupsSequence" in ds
        )
        self.groups = [*_items(ds, "PerFrameFunctionalGroupsSequence")[:1],
                       *_items(ds, "SharedFunctionalGroupsSequence")[:1]]

    def get(self, keyword: str) -> Any:
        value = _value(self.ds, keyword)
        if value is not None or not self.enhanced:
            return value
        alias = _ENHANCED_ALIASES.get(keyword, keyword)
        value = _value(self.ds, alias) if alias != keyword else None
        for group in self.groups:
            if value is not None:
                break
            value = _in_macros(group, alias)
        return value


def _in_macros(group: Dataset, keyword: str) -> Any:
    for element in group:
        if element.VR == "SQ" and element.value:
            value = _value(element.value[0], keyword)
            if value is not None:
                return value
    return None


def _derived(lookup: _Lookup, vendor: VendorValues) -> Fingerprint:
    axis = {"ROW": "i", "COL": "j"}.get(_to_text(lookup.get("InPlanePhaseEncodingDirection"))
                                        or "")
    polarity = vendor.phase_encoding_polarity
    direction = None
    if axis is not None and polarity in (1, -1):
        # dcm2niix (default -y flip): a positive COL polarity is "j-" in NIfTI voxel order
        flipped = (polarity == -1) != (axis == "j")
        direction = axis + ("-" if flipped else "")
    parallel = vendor.parallel_reduction_factor_in_plane
    if parallel is None:
        parallel = _to_float(lookup.get("ParallelReductionFactorInPlane"))
    partial = vendor.partial_fourier
    if partial is None and _to_text(lookup.get("PartialFourier")) == "NO":
        partial = 1.0  # standard MR Modifier: full k-space; "YES" gives no fraction
    return {
        "PhaseEncodingDirection": direction,
        "PhaseEncodingPolarity": polarity,
        "ParallelReductionFactorInPlane": parallel,
        "MultibandFactor": vendor.multiband_factor,
        "PartialFourier": partial,
    }


def _acquisition_matrix(lookup: _Lookup) -> list[int] | None:
    """(0018,1310) frequency rows\\frequency columns\\phase rows\\phase columns."""
    raw = lookup.get("AcquisitionMatrix")
    if raw is not None:
        values = [_to_int(v) for v in _as_list(raw)]
        return [v for v in values if v is not None] if None not in values else None
    freq = _to_int(lookup.get("MRAcquisitionFrequencyEncodingSteps"))
    phase = _to_int(lookup.get("MRAcquisitionPhaseEncodingStepsInPlane"))
    direction = _to_text(lookup.get("InPlanePhaseEncodingDirection"))
    if freq is None or phase is None or direction not in ("ROW", "COL"):
        return None
    return [freq, 0, 0, phase] if direction == "COL" else [0, freq, phase, 0]


# --- slices and volumes -------------------------------------------------------------------


def _counts(
    ordered: Sequence[Dataset], *, instance_count: int, vendor: VendorValues
) -> tuple[int | None, int | None]:
    first, last = ordered[0], ordered[-1]
    if "PerFrameFunctionalGroupsSequence" in first:
        return _enhanced_counts(first, instance_count=instance_count)
    if vendor.mosaic_slices:
        return vendor.mosaic_slices, instance_count
    if vendor.slices and vendor.volumes and vendor.slices * vendor.volumes == instance_count:
        return vendor.slices, vendor.volumes
    if vendor.slices and instance_count % vendor.slices == 0:
        return vendor.slices, instance_count // vendor.slices
    temporal = _to_int(first.get("NumberOfTemporalPositions"))
    if temporal and temporal > 0 and instance_count % temporal == 0:
        return instance_count // temporal, temporal
    volumes = _temporal_span(first, last)
    if volumes > 1 and instance_count % volumes == 0:
        return instance_count // volumes, volumes
    positions = [_slice_position(ds) for ds in ordered]
    if instance_count > 1 and len(ordered) < 2:
        return None, None  # one header cannot tell slices from repeats
    if volumes == 1 and None not in positions and _all_distinct(positions):
        return instance_count, 1
    return None, None


def _temporal_span(first: Dataset, last: Dataset) -> int:
    for keyword in ("TemporalPositionIdentifier", "AcquisitionNumber"):
        start, end = _to_int(_value(first, keyword)), _to_int(_value(last, keyword))
        if start is not None and end is not None and end != start:
            return end - start + 1 if end > start else 0
    return 1


def _enhanced_counts(ds: Dataset, *, instance_count: int) -> tuple[int | None, int | None]:
    frames = _to_int(_value(ds, "NumberOfFrames"))
    shared = _items(ds, "SharedFunctionalGroupsSequence")[:1]
    positions: list[float | None] = []
    for group in _items(ds, "PerFrameFunctionalGroupsSequence"):
        orientation = _in_macros(group, "ImageOrientationPatient")
        if orientation is None and shared:
            orientation = _in_macros(shared[0], "ImageOrientationPatient")
        positions.append(_project(_in_macros(group, "ImagePositionPatient"), orientation))
    if not frames or len(positions) != frames or None in positions:
        return None, None
    slices = len(_distinct([p for p in positions if p is not None]))
    total = frames * instance_count
    return (slices, total // slices) if total % slices == 0 else (slices, None)


def _slice_position(ds: Dataset) -> float | None:
    return _project(_value(ds, "ImagePositionPatient"), _value(ds, "ImageOrientationPatient"))


def _project(position: Any, orientation: Any) -> float | None:
    """Distance of a slice along its normal (row x column direction cosines)."""
    pos, cosines = _float_list(position, length=3), _float_list(orientation, length=6)
    if pos is None or cosines is None:
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    return float(np.dot(normal, pos))


def _distinct(values: Sequence[float]) -> list[float]:
    kept: list[float] = []
    for value in sorted(values):
        if not kept or value - kept[-1] > _SAME_POSITION_MM:
            kept.append(value)
    return kept


def _all_distinct(values: Sequence[float | None]) -> bool:
    numbers = [v for v in values if v is not None]
    return len(_distinct(numbers)) == len(numbers)


# --- safe value conversion (a malformed attribute is unknown, never an exception) ----------


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:  # an invalid DS/IS string raises on access in strict modes
        return None
    if value is None or value == "" or (isinstance(value, Sequence) and len(value) == 0):
        return None
    return value


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    value = _value(ds, keyword)
    return [item for item in value if isinstance(item, Dataset)] if value is not None else []


def _instance_number(ds: Dataset) -> int:
    number = _to_int(_value(ds, "InstanceNumber"))
    return number if number is not None else 0


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _to_float(value: Any) -> float | None:
    items = _as_list(value) if value is not None else []
    try:
        number = float(items[0]) if items and items[0] not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _to_int(value: Any) -> int | None:
    number = _to_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _to_text(value: Any) -> str | None:
    if value is None or isinstance(value, bytes):
        return None
    text = "\\".join(str(v).strip() for v in _as_list(value)).strip()
    return text or None


def _float_list(value: Any, *, length: int) -> list[float] | None:
    if value is None:
        return None
    items = [_to_float(v) for v in _as_list(value)]
    if len(items) != length or None in items:
        return None
    return [v for v in items if v is not None]
