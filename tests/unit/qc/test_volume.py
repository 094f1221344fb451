"""services.volume: slice order, affine, 4D grouping, mosaic, Enhanced MR, and the
reasons a series cannot become a volume."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedMRImageStorage

from services.volume import LPS_TO_RAS, VolumeError, load_dicom_series, load_nifti
from tests.unit.qc.factories import lps_affine, slice_datasets, write

AXIAL = {"row_cos": (1.0, 0.0, 0.0), "col_cos": (0.0, 1.0, 0.0)}
SAGITTAL = {"row_cos": (0.0, 1.0, 0.0), "col_cos": (0.0, 0.0, -1.0)}
OBLIQUE = {"row_cos": (np.cos(0.3), np.sin(0.3), 0.0), "col_cos": (0.0, 0.0, -1.0)}
SPACING = (0.9, 1.1, 2.5)
ORIGIN = (-20.0, 30.0, -15.0)


def _data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.float32)


def _expected(data: np.ndarray, geometry: dict[str, tuple[float, ...]]) -> nib.Nifti1Image:
    affine = lps_affine(**geometry, origin=ORIGIN, spacing=SPACING)
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def _shuffled(paths: list[Path]) -> list[Path]:
    shuffled = list(paths)
    random.Random(4).shuffle(shuffled)
    return shuffled


@pytest.mark.parametrize("geometry", [AXIAL, SAGITTAL, OBLIQUE], ids=["axial", "sag", "obl"])
def test_shuffled_3d_series_in_slice_order_with_affine(tmp_path: Path,
                                                       geometry: dict[str, tuple[float, ...]]
                                                       ) -> None:
    data = _data((12, 10, 7))
    paths = write(slice_datasets(data, **geometry, origin=ORIGIN, spacing=SPACING), tmp_path)
    volume = load_dicom_series(_shuffled(paths))
    expected = _expected(data, geometry)
    np.testing.assert_array_equal(volume.data, np.asarray(expected.dataobj))
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-5)
    assert volume.zooms == pytest.approx(tuple(expected.header.get_zooms()))
    assert volume.repetition_time_s == pytest.approx(2.3)


def test_affine_matches_simpleitk_series_reader(tmp_path: Path) -> None:
    data = _data((12, 10, 7), seed=1)
    paths = write(slice_datasets(data, **OBLIQUE, origin=ORIGIN, spacing=SPACING), tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(
        image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    reference = nib.as_closest_canonical(
        nib.Nifti1Image(sitk.GetArrayFromImage(image).T.astype(np.float32),
                        LPS_TO_RAS @ affine))
    volume = load_dicom_series(_shuffled(paths))
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-4)
    np.testing.assert_array_equal(volume.data, np.asarray(reference.dataobj))


def test_rescale_slope_and_intercept_applied(tmp_path: Path) -> None:
    data = _data((8, 8, 4)) * 0.5 - 100.0
    paths = write(slice_datasets(data, **AXIAL, origin=ORIGIN, spacing=SPACING, slope=0.5,
                                 intercept=-100.0), tmp_path)
    volume = load_dicom_series(paths)
    np.testing.assert_allclose(volume.data, np.asarray(_expected(data, AXIAL).dataobj))


def test_4d_grouped_by_acquisition_number(tmp_path: Path) -> None:
    data = _data((8, 9, 5, 4), seed=2)
    paths = write(slice_datasets(data, **SAGITTAL, origin=ORIGIN, spacing=SPACING), tmp_path)
    volume = load_dicom_series(_shuffled(paths))
    expected = _expected(data, SAGITTAL)
    assert volume.data.shape[3] == 4
    np.testing.assert_array_equal(volume.data, np.asarray(expected.dataobj))


def test_4d_grouped_by_instance_number_without_acquisition_number(tmp_path: Path) -> None:
    data = _data((8, 9, 5, 3), seed=3)
    datasets = slice_datasets(data, **AXIAL, origin=ORIGIN, spacing=SPACING)
    for ds in datasets:
        del ds.AcquisitionNumber
    volume = load_dicom_series(_shuffled(write(datasets, tmp_path)))
    np.testing.assert_array_equal(volume.data, np.asarray(_expected(data, AXIAL).dataobj))


# --- mosaic --------------------------------------------------------------------------------


def _mosaic_datasets(data: np.ndarray, *, csa: bool) -> list[Dataset]:
    """Siemens mosaics (one instance per volume) of `data` (x, y, z, t), axial."""
    nx, ny, nz, nt = data.shape
    tiles = int(np.ceil(np.sqrt(nz)))
    out = []
    template = slice_datasets(data[:, :, :1, :], **AXIAL, origin=ORIGIN, spacing=SPACING)
    for t in range(nt):
        ds = template[t]
        mosaic = np.zeros((tiles * ny, tiles * nx), dtype=np.uint16)
        for k in range(nz):
            r, c = divmod(k, tiles)
            mosaic[r * ny:(r + 1) * ny, c * nx:(c + 1) * nx] = data[:, :, k, t].T
        ds.Rows, ds.Columns = mosaic.shape
        ds.PixelData = mosaic.tobytes()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.SpacingBetweenSlices = SPACING[2]
        # the mosaic position is the top-left of the whole tile grid
        shift = (np.asarray(AXIAL["col_cos"]) * SPACING[1] * (ds.Rows - ny) / 2
                 + np.asarray(AXIAL["row_cos"]) * SPACING[0] * (ds.Columns - nx) / 2)
        ds.ImagePositionPatient = (np.asarray(ORIGIN) - shift).tolist()
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", nz)
        if csa:
            header = _csa2({"NumberOfImagesInMosaic": ("US", [str(nz)]),
                            "AcquisitionMatrixText": ("SH", [f"{ny}p*{nx}"]),
                            "SliceNormalVector": ("FD", ["0.0", "0.0", "1.0"])})
            ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB",
                                                                               header)
        out.append(ds)
    return out


def _csa2(tags: dict[str, tuple[str, list[str]]]) -> bytes:
    """CSA2 layout as nibabel.nicom.csareader reads it."""
    out = bytearray(b"SV10\x04\x03\x02\x01") + struct.pack("<2I", len(tags), 77)
    for name, (vr, values) in tags.items():
        out += struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0,
                           len(values), 77)
        for value in values:
            raw = value.encode() + b"\x00"
            out += struct.pack("<4i", len(raw), len(raw), 77, len(raw))
            out += raw + b"\x00" * (-len(raw) % 4)
    return bytes(out)


@pytest.mark.parametrize("csa", [False, True], ids=["private-tag", "csa-nibabel"])
def test_mosaic_unpacked_to_4d(tmp_path: Path, csa: bool) -> None:
    data = _data((10, 8, 7, 3), seed=5)
    paths = write(_mosaic_datasets(data, csa=csa), tmp_path)
    volume = load_dicom_series(_shuffled(paths))
    expected = _expected(data, AXIAL)
    np.testing.assert_array_equal(volume.data, np.asarray(expected.dataobj))
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-4)


# --- Enhanced MR multi-frame ---------------------------------------------------------------


def _enhanced(data: np.ndarray) -> Dataset:
    """One Enhanced MR instance with (x, y, z, t) frames, axial, stack and temporal index."""
    nz, nt = data.shape[2:]
    ds = slice_datasets(data[:, :, :1, 0], **AXIAL, origin=ORIGIN, spacing=SPACING)[0]
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "SliceThickness", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.NumberOfFrames = nz * nt
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [SPACING[1], SPACING[0]]
    measures.SliceThickness = SPACING[2]
    measures.SpacingBetweenSlices = SPACING[2]
    orientation = Dataset()
    orientation.ImageOrientationPatient = [*AXIAL["row_cos"], *AXIAL["col_cos"]]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    index = Dataset()
    index.DimensionIndexPointer = 0x00209057  # InStackPositionNumber
    index.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    temporal = Dataset()
    temporal.DimensionIndexPointer = 0x00209128  # TemporalPositionIndex
    temporal.FunctionalGroupPointer = 0x00209111
    stack = Dataset()
    stack.DimensionIndexPointer = 0x00209056  # StackID
    stack.FunctionalGroupPointer = 0x00209111
    ds.DimensionIndexSequence = DicomSequence([stack, index, temporal])
    frames, pixels = [], []
    order = [(k, t) for t in range(nt) for k in range(nz)]
    random.Random(9).shuffle(order)  # frames stored in no particular order
    for k, t in order:
        frame = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.TemporalPositionIndex = t + 1
        content.DimensionIndexValues = [1, k + 1, t + 1]
        position = Dataset()
        position.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2]]
        frame.FrameContentSequence = DicomSequence([content])
        frame.PlanePositionSequence = DicomSequence([position])
        frames.append(frame)
        pixels.append(data[:, :, k, t].T.astype(np.uint16))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.stack(pixels).tobytes()
    return ds


def test_enhanced_multiframe_4d(tmp_path: Path) -> None:
    data = _data((10, 8, 5, 3), seed=6)
    paths = write([_enhanced(data)], tmp_path)
    volume = load_dicom_series(paths)
    expected = _expected(data, AXIAL)
    np.testing.assert_array_equal(volume.data, np.asarray(expected.dataobj))
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-4)


# --- errors ---------------------------------------------------------------------------------


def test_missing_slice_is_reported(tmp_path: Path) -> None:
    paths = write(slice_datasets(_data((8, 8, 9)), **AXIAL, origin=ORIGIN, spacing=SPACING),
                  tmp_path)
    with pytest.raises(VolumeError) as error:
        load_dicom_series(paths[:4] + paths[5:])
    assert error.value.reason == "missing_slices"


def test_missing_instance_of_a_4d_series_is_reported(tmp_path: Path) -> None:
    paths = write(slice_datasets(_data((8, 8, 4, 3)), **AXIAL, origin=ORIGIN,
                                 spacing=SPACING), tmp_path)
    with pytest.raises(VolumeError) as error:
        load_dicom_series(paths[:-1])
    assert error.value.reason == "missing_slices"


def test_mixed_orientations_are_reported(tmp_path: Path) -> None:
    axial = slice_datasets(_data((8, 8, 4)), **AXIAL, origin=ORIGIN, spacing=SPACING)
    sagittal = slice_datasets(_data((8, 8, 4)), **SAGITTAL, origin=ORIGIN, spacing=SPACING)
    for ds in sagittal:
        ds.SeriesInstanceUID = axial[0].SeriesInstanceUID
    with pytest.raises(VolumeError) as error:
        load_dicom_series(write(axial + sagittal[:1], tmp_path))
    assert error.value.reason == "mixed_orientations"


def test_different_matrix_sizes_are_reported(tmp_path: Path) -> None:
    datasets = slice_datasets(_data((8, 8, 4)), **AXIAL, origin=ORIGIN, spacing=SPACING)
    datasets[2].Rows = 4
    datasets[2].PixelData = np.zeros((4, 8), np.uint16).tobytes()
    with pytest.raises(VolumeError) as error:
        load_dicom_series(write(datasets, tmp_path))
    assert error.value.reason == "inconsistent_geometry"


def test_no_pixel_data_is_reported(tmp_path: Path) -> None:
    datasets = slice_datasets(_data((8, 8, 4)), **AXIAL, origin=ORIGIN, spacing=SPACING)
    del datasets[1].PixelData
    with pytest.raises(VolumeError) as error:
        load_dicom_series(write(datasets, tmp_path))
    assert error.value.reason == "no_pixel_data"


def test_nifti_round_trip(tmp_path: Path) -> None:
    data = _data((6, 7, 5, 2))
    affine = lps_affine(**SAGITTAL, origin=ORIGIN, spacing=SPACING)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    nib.save(image, tmp_path / "bold.nii.gz")
    volume = load_nifti(tmp_path / "bold.nii.gz")
    expected = nib.as_closest_canonical(image)
    np.testing.assert_array_equal(volume.data, np.asarray(expected.dataobj))
    np.testing.assert_allclose(volume.affine, expected.affine)
    assert volume.repetition_time_s == pytest.approx(2.0)
