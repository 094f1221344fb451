"""Checks an instance must pass before it is stored; each failure maps to a DICOM status."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from receiver import status

_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# MR, Enhanced MR, MR Spectroscopy, Enhanced MR Color, Legacy Converted Enhanced MR: their
# IODs fix Modality to MR. A CT, PET, ... image relabelled as MR is refused, not stored.
_MR_SOP_CLASSES = frozenset(f"1.2.840.10008.5.1.4.1.1.4{suffix}"
                            for suffix in ("", ".1", ".2", ".3", ".4"))


@dataclass(frozen=True)
class Rejection:
    status: int
    reason: str  # low-cardinality metrics label
    message: str


def validate_instance(
    ds: Dataset, *, context_sop_class: str, affected_sop_instance: str | None
) -> Rejection | None:
    """The first reason `ds` cannot be stored, or None when it can."""
    for keyword in _REQUIRED_UIDS:
        value = ds.get(keyword)
        if not value:
            return Rejection(status.CANNOT_UNDERSTAND, "missing_attribute", f"{keyword} is missing")
        if not UID(str(value)).is_valid:
            return Rejection(
                status.CANNOT_UNDERSTAND, "invalid_uid", f"{keyword} is not a valid UID"
            )
    if ds.SOPClassUID != context_sop_class:
        return Rejection(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "sop_class_mismatch",
            f"SOPClassUID {ds.SOPClassUID} differs from the presentation context's "
            f"{context_sop_class}",
        )
    modality = str(ds.get("Modality", "") or "")
    if ds.SOPClassUID in _MR_SOP_CLASSES and modality not in ("", "MR"):
        return Rejection(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "modality_mismatch",
            f"Modality {modality[:16]!r} in an MR storage SOP class instance",
        )
    if affected_sop_instance and ds.SOPInstanceUID != affected_sop_instance:
        return Rejection(
            status.CANNOT_UNDERSTAND,
            "sop_instance_mismatch",
            "SOPInstanceUID differs from the command's Affected SOP Instance UID",
        )
    return _check_pixel_data(ds)


def _check_pixel_data(ds: Dataset) -> Rejection | None:
    """Native (uncompressed) pixel data must be as long as its image attributes say."""
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        expected_bits = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.SamplesPerPixel)
            * int(ds.BitsAllocated)
            * frames
        )
    except (AttributeError, TypeError, ValueError):
        return Rejection(
            status.CANNOT_UNDERSTAND,
            "missing_attribute",
            "pixel data without Rows, Columns, SamplesPerPixel or BitsAllocated",
        )
    expected = (expected_bits + 7) // 8
    actual = len(ds.PixelData)
    if actual not in (expected, expected + 1):  # +1: even-length padding
        return Rejection(
            status.CANNOT_UNDERSTAND,
            "truncated_pixel_data",
            f"pixel data has {actual} bytes where the image attributes need {expected}",
        )
    return None
