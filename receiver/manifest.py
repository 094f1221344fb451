"""A study's manifest, built from what the blob store holds (never from memory).

One header per series is read (without pixel data) for the key acquisition
attributes; instance counts and keys come from the listing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat

from services.blobstore import FileBlobStore
from services.events import EventData, SeriesManifest

KEY_HEADERS = (
    "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions",
    "StationName", "MagneticFieldStrength", "SeriesDescription", "ProtocolName",
    "SequenceName", "ImageType", "ScanningSequence", "SequenceVariant", "ScanOptions",
    "MRAcquisitionType", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
    "EchoTrainLength", "SliceThickness", "SpacingBetweenSlices", "PixelSpacing", "Rows",
    "Columns", "AcquisitionMatrix", "PixelBandwidth", "InPlanePhaseEncodingDirection",
    "NumberOfFrames", "ImageOrientationPatient", "BodyPartExamined",
)


class StudyManifestBody(EventData):
    study_date: str | None
    patient_age: str | None
    patient_sex: str | None
    instance_count: int
    series: list[SeriesManifest]


def build_manifest(blobs: FileBlobStore, *, study_uid: str, site: str) -> StudyManifestBody | None:
    prefix = f"dicom/{site}/{study_uid}"
    by_series: dict[str, list[str]] = defaultdict(list)
    for key in blobs.list(prefix):
        by_series[key.split("/")[3]].append(key)
    if not by_series:
        return None
    series = []
    first: Dataset | None = None
    for series_uid, keys in by_series.items():
        header = dcmread(blobs.path(keys[0]), stop_before_pixels=True)
        first = first or header
        series.append(SeriesManifest(
            series_uid=series_uid,
            series_number=_json(header.get("SeriesNumber")),
            series_description=_text(header, "SeriesDescription"),
            protocol_name=_text(header, "ProtocolName"),
            modality=_text(header, "Modality"),
            sop_class_uids=[str(header.SOPClassUID)],
            instance_count=len(keys),
            blob_prefix=f"{prefix}/{series_uid}",
            blob_keys=keys,
            headers={k: _json(header.get(k)) for k in KEY_HEADERS if header.get(k) is not None},
        ))
    series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    assert first is not None
    return StudyManifestBody(
        study_date=_text(first, "StudyDate"),
        patient_age=_text(first, "PatientAge"),
        patient_sex=_text(first, "PatientSex"),
        instance_count=sum(len(keys) for keys in by_series.values()),
        series=series,
    )


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None


def _json(value: Any) -> Any:
    """A DICOM element value as plain JSON (numbers stay numbers)."""
    if isinstance(value, MultiValue | list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, DSfloat | float):
        return float(value)
    if isinstance(value, int | str):
        return value
    if isinstance(value, bytes):
        return None
    return str(value) if value is not None else None
