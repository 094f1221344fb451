"""One DICOM series (or a NIfTI file) in, one RAS+ volume out: shared by QC and harmonization.

Enhanced MR multi-frame and CSA-tagged Siemens mosaics go through nibabel's `nicom`
wrappers (the field's reader for both). Classic one-instance-per-slice series, 3D or 4D,
are sorted here: SimpleITK's ImageSeriesReader orders one 3D stack but has no notion of
volumes, so a 4D series needs its own grouping (positions repeated per volume). Every
result is reoriented to the closest canonical (RAS+) axes with nibabel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pydicom
from pydicom.dataset import Dataset

with warnings.catch_warnings():
    # nibabel.nicom warns on import that its DICOM readers are experimental; we use its
    # mosaic and multi-frame wrappers only, and check their output in our tests.
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader as _csareader
    from nibabel.nicom import dicomwrappers as _dicomwrappers

# nibabel is untyped: one Any-typed handle each keeps the strict checks on our own code.
nib: Any = nibabel
csareader: Any = _csareader
dicomwrappers: Any = _dicomwrappers

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SAME_POSITION_MM = 0.01
_GAP_TOLERANCE = 0.1  # relative: a gap off the median by more than this is a missing slice
_ORIENTATION_TOLERANCE = 1e-4


class VolumeError(Exception):
    """A series that cannot become a volume; `reason` is a low-cardinality label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Volume:
    data: np.ndarray  # float32, (x, y, z) or (x, y, z, t), RAS+ axes
    affine: np.ndarray  # 4x4, voxel -> RAS+ mm
    repetition_time_s: float | None = None

    @property
    def zooms(self) -> tuple[float, ...]:
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def load_nifti(path: Path) -> Volume:
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for a corrupt file
        raise VolumeError("unreadable", str(exc)) from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError("unsupported", type(image).__name__)
    if image.ndim not in (3, 4):
        raise VolumeError("unsupported", f"{image.ndim}D image")
    canonical = nib.as_closest_canonical(image)
    zooms = image.header.get_zooms()
    tr = float(zooms[3]) if image.ndim == 4 and zooms[3] > 0 else None
    if tr is not None and image.header.get_xyzt_units()[1] == "msec":
        tr /= 1000.0
    data = np.asarray(canonical.get_fdata(dtype=np.float32), dtype=np.float32)
    return Volume(data=data, affine=canonical.affine.copy(), repetition_time_s=tr)


def load_dicom_series(paths: Sequence[Path]) -> Volume:
    if not paths:
        raise VolumeError("empty_series")
    datasets = [_read(path) for path in paths]
    if len({str(ds.get("SeriesInstanceUID", "")) for ds in datasets}) > 1:
        raise VolumeError("mixed_series")
    first = datasets[0]
    if first.get("SOPClassUID") == ENHANCED_MR or int(first.get("NumberOfFrames", 1)) > 1:
        if len(datasets) > 1:
            raise VolumeError("unsupported", "several multi-frame instances in one series")
        return _multiframe(datasets[0])
    if _is_mosaic(first):
        return _mosaic(datasets)
    return _single_frames(datasets)


def _read(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError...
        raise VolumeError("unreadable", f"{path.name}: {exc}") from exc
    if "PixelData" not in ds:
        raise VolumeError("no_pixel_data", path.name)
    return ds


def _canonical(data: np.ndarray, affine_lps: np.ndarray, tr_ms: Any) -> Volume:
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), LPS_TO_RAS @ affine_lps)
    canonical = nib.as_closest_canonical(image)
    tr = float(tr_ms) / 1000.0 if tr_ms not in (None, "") and float(tr_ms) > 0 else None
    return Volume(data=np.asarray(canonical.dataobj, dtype=np.float32),
                  affine=canonical.affine.copy(), repetition_time_s=tr)


def _pixels(ds: Dataset) -> np.ndarray:
    try:
        array = ds.pixel_array
    except Exception as exc:  # missing decoder, truncated pixel data
        raise VolumeError("no_pixel_data", str(exc)) from exc
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return np.asarray(array, dtype=np.float32) * slope + intercept


def _orientation(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is None or ipp is None or ds.get("PixelSpacing") is None:
        raise VolumeError("missing_geometry")
    return np.array([float(v) for v in iop]), np.array([float(v) for v in ipp])


def _check_same_geometry(datasets: Sequence[Dataset]) -> np.ndarray:
    first = datasets[0]
    iop0, _ = _orientation(first)
    for ds in datasets[1:]:
        iop, _ = _orientation(ds)
        if np.max(np.abs(iop - iop0)) > _ORIENTATION_TOLERANCE:
            raise VolumeError("mixed_orientations")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise VolumeError("inconsistent_geometry", "Rows/Columns differ")
        if not np.allclose([float(v) for v in ds.PixelSpacing],
                           [float(v) for v in first.PixelSpacing], atol=1e-4):
            raise VolumeError("inconsistent_geometry", "PixelSpacing differs")
    return iop0


def _temporal_key(ds: Dataset) -> tuple[float, float, str, float]:
    return (float(ds.get("TemporalPositionIdentifier", 0) or 0),
            float(ds.get("AcquisitionNumber", 0) or 0),
            str(ds.get("AcquisitionTime", "") or ""),
            float(ds.get("InstanceNumber", 0) or 0))


def _single_frames(datasets: Sequence[Dataset]) -> Volume:
    iop = _check_same_geometry(datasets)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    projections = np.array([_orientation(ds)[1] @ normal for ds in datasets])
    order = np.argsort(projections, kind="stable")
    groups: list[list[int]] = []
    for index in order:
        if groups and projections[index] - projections[groups[-1][0]] < _SAME_POSITION_MM:
            groups[-1].append(int(index))
        else:
            groups.append([int(index)])
    n_volumes = len(groups[0])
    if any(len(group) != n_volumes for group in groups):
        raise VolumeError("missing_slices", "a slice position lacks a volume")
    slice_spacing = _slice_spacing(projections, groups, datasets[0])
    # array axes (x, y, z, t): x along the row direction (column index), y along columns
    slices = [[_pixels(datasets[i]).T for i in sorted(group, key=lambda i: _temporal_key(
        datasets[i]))] for group in groups]
    data = np.stack([np.stack(per_slice, axis=-1) for per_slice in slices], axis=2)
    if n_volumes == 1:
        data = data[..., 0]
    first = datasets[groups[0][0]]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * col_spacing
    affine[:3, 1] = col_cos * row_spacing
    affine[:3, 2] = normal * slice_spacing
    affine[:3, 3] = _orientation(first)[1]
    return _canonical(data, affine, first.get("RepetitionTime"))


def _slice_spacing(projections: np.ndarray, groups: list[list[int]], first: Dataset) -> float:
    if len(groups) == 1:
        return float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    positions = np.array([projections[group[0]] for group in groups])
    gaps = np.diff(positions)
    spacing = float(np.median(gaps))
    if np.any(np.abs(gaps - spacing) > _GAP_TOLERANCE * spacing):
        raise VolumeError("missing_slices",
                          f"slice gaps from {gaps.min():.3g} to {gaps.max():.3g} mm")
    return spacing


def _siemens_n_mosaic(ds: Dataset) -> int | None:
    try:
        value = ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0A].value
    except KeyError:
        return None
    if isinstance(value, bytes):  # implicit VR files keep an unknown private tag as bytes
        value = int.from_bytes(value[:2], "little")
    return int(value)


def _is_mosaic(ds: Dataset) -> bool:
    return "MOSAIC" in [str(v).upper() for v in ds.get("ImageType", [])] or _csa_mosaic(ds)


def _csa_mosaic(ds: Dataset) -> bool:
    try:
        return bool(csareader.is_mosaic(csareader.get_csa_header(ds)))
    except csareader.CSAReadError:
        return False


def _mosaic(datasets: Sequence[Dataset]) -> Volume:
    _check_same_geometry(datasets)
    ordered = sorted(datasets, key=_temporal_key)
    volumes, affines = zip(*(_unmosaic(ds) for ds in ordered), strict=True)
    if any(v.shape != volumes[0].shape for v in volumes):
        raise VolumeError("inconsistent_geometry", "mosaic tile count differs")
    if any(not np.allclose(a, affines[0], atol=1e-3) for a in affines):
        raise VolumeError("inconsistent_geometry", "mosaic positions differ between volumes")
    data = volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=-1)
    return _canonical(data, affines[0], ordered[0].get("RepetitionTime"))


def _unmosaic(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) data and LPS affine of one mosaic instance."""
    if _csa_mosaic(ds):
        wrapper = dicomwrappers.wrapper_from_data(ds)
        return np.asarray(wrapper.get_data(), dtype=np.float32), np.asarray(wrapper.affine)
    n_images = _siemens_n_mosaic(ds)
    if not n_images:
        raise VolumeError("unsupported", "mosaic without NumberOfImagesInMosaic or CSA header")
    tiles = math.ceil(math.sqrt(n_images))
    rows, cols = int(ds.Rows) // tiles, int(ds.Columns) // tiles
    mosaic = _pixels(ds)
    stack = mosaic.reshape(tiles, rows, tiles, cols).transpose(0, 2, 1, 3)
    data = stack.reshape(tiles * tiles, rows, cols)[:n_images].transpose(2, 1, 0)
    iop, ipp = _orientation(ds)
    row_cos, col_cos = iop[:3], iop[3:]
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    # The mosaic's position is the top-left of the whole tile grid, not of one tile
    # (nibabel doc/theory/dicom_mosaic); without CSA the normal is row x column.
    shift = (col_cos * row_spacing * (int(ds.Rows) - rows) / 2
             + row_cos * col_spacing * (int(ds.Columns) - cols) / 2)
    spacing = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * col_spacing
    affine[:3, 1] = col_cos * row_spacing
    affine[:3, 2] = np.cross(row_cos, col_cos) * spacing
    affine[:3, 3] = ipp + shift
    return data, affine


def _multiframe(ds: Dataset) -> Volume:
    try:
        wrapper = dicomwrappers.MultiframeWrapper(ds)
        data = np.asarray(wrapper.get_data(), dtype=np.float32)
        affine = np.asarray(wrapper.affine)
    except dicomwrappers.WrapperError as exc:
        raise VolumeError(_multiframe_reason(str(exc)), str(exc)) from exc
    except (AttributeError, IndexError, KeyError, ValueError) as exc:
        raise VolumeError("unsupported", f"multi-frame: {exc}") from exc
    if data.ndim > 4:
        raise VolumeError("unsupported", f"{data.ndim}D multi-frame")
    return _canonical(data, affine, _multiframe_tr(ds))


def _multiframe_reason(message: str) -> str:
    text = message.lower()
    if "orient" in text:
        return "mixed_orientations"
    if "missing" in text or "not divisible" in text or "shape" in text:
        return "missing_slices"
    return "unsupported"


def _multiframe_tr(ds: Dataset) -> Any:
    if ds.get("RepetitionTime") is not None:
        return ds.RepetitionTime
    for group in ds.get("SharedFunctionalGroupsSequence", []):
        for timing in group.get("MRTimingAndRelatedParametersSequence", []):
            if timing.get("RepetitionTime") is not None:
                return timing.RepetitionTime
    return None
