"""Synthetic T1w heads with known ground truth, and DICOM series written from them.

The anatomy comes from the MNI152 2009 GM/WM probability maps that nilearn ships (read
straight from its package data, nilearn itself is not imported): GM/WM are the larger of
the two maps where their sum is >= 0.5 and the template T1 is not dark (>= 0.45); the
intracranial volume (ICV) is the closed, hole-filled (GM + WM >= 0.1) region;
CSF = ICV - GM - WM; around it a 4 mm dark skull and a 4 mm bright scalp. Intensities,
Rician noise sigma and a smooth bias field are known.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

from services.volume import LPS_TO_RAS

INTENSITY = {"air": 0.0, "csf": 250.0, "gm": 550.0, "wm": 850.0, "skull": 40.0,
             "scalp": 700.0}
LABELS = {"csf": 1, "gm": 2, "wm": 3, "skull": 4, "scalp": 5}


def nilearn_data_dir() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "datasets" / "data"


@dataclass(frozen=True)
class SyntheticHead:
    image: np.ndarray  # float32, RAS+ axes
    truth: np.ndarray  # uint8 labels (LABELS), 0 air
    bias: np.ndarray  # multiplicative field applied
    affine: np.ndarray
    sigma: float

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def volume_ml(self, tissue: str) -> float:
        return float((self.truth == LABELS[tissue]).sum()) * self.voxel_ml

    @property
    def icv_ml(self) -> float:
        return float(np.isin(self.truth, [1, 2, 3]).sum()) * self.voxel_ml


def _ball(radius: int) -> np.ndarray:
    g = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(3))]
    return np.asarray(sum(x**2 for x in g) <= radius**2)


def head_labels(step: int = 2, *, shape: tuple[int, int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, affine) at `step` mm, optionally padded/cropped to `shape` (centred)."""
    data_dir = nilearn_data_dir()
    assert data_dir is not None
    gm_img = nib.load(data_dir / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm_img = nib.load(data_dir / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    t1_img = nib.load(data_dir / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm, wm, t1 = (np.asarray(img.dataobj, dtype=np.float32)[::step, ::step, ::step] / 255.0
                  for img in (gm_img, wm_img, t1_img))
    affine = gm_img.affine @ np.diag([step, step, step, 1.0])
    pad = 16 // step + 1  # room for skull and scalp below the template's field of view
    gm, wm, t1 = (np.pad(a, pad) for a in (gm, wm, t1))
    affine = affine @ _translation(-pad)
    tissue = ((gm + wm) >= 0.5) & (t1 >= 0.45)  # dark on the template T1: sulcal CSF
    icv = ndimage.binary_closing((gm + wm) >= 0.1, _ball(max(1, 4 // step)), border_value=0)
    icv = ndimage.binary_fill_holes(icv)
    labels = np.zeros(gm.shape, dtype=np.uint8)
    labels[icv] = LABELS["csf"]
    labels[icv & tissue & (gm >= wm)] = LABELS["gm"]
    labels[icv & tissue & (wm > gm)] = LABELS["wm"]
    shell = max(1, 4 // step)
    skull = ndimage.binary_dilation(icv, _ball(shell)) & ~icv
    scalp = ndimage.binary_dilation(icv | skull, _ball(shell)) & ~(icv | skull)
    labels[skull] = LABELS["skull"]
    labels[scalp] = LABELS["scalp"]
    if shape is not None:
        labels, affine = _fit(labels, affine, shape)
    return labels, affine


def _translation(voxels: int) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = voxels
    return t


def _fit(labels: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int]
         ) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros(shape, dtype=labels.dtype)
    src, dst, offset = [], [], []
    for have, want in zip(labels.shape, shape, strict=True):
        start = (have - want) // 2
        if start >= 0:
            src.append(slice(start, start + want))
            dst.append(slice(None))
        else:
            src.append(slice(None))
            dst.append(slice(-start, -start + have))
        offset.append(start)
    out[tuple(dst)] = labels[tuple(src)]
    shift = np.eye(4)
    shift[:3, 3] = offset
    return out, affine @ shift


def bias_field(shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """exp of a smooth linear + quadratic log field: about +-`amplitude` across the head."""
    grids = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape),
                        indexing="ij")
    x, y, z = grids
    log_field = amplitude * (0.6 * x + 0.3 * y - 0.4 * z + 0.3 * (x**2 - y * z))
    return np.exp(log_field).astype(np.float32)


def synthetic_head(*, step: int = 2, sigma: float = 20.0, bias_amplitude: float = 0.0,
                   seed: int = 0, shape: tuple[int, int, int] | None = None) -> SyntheticHead:
    labels, affine = head_labels(step, shape=shape)
    clean = np.zeros(labels.shape, dtype=np.float32)
    for name, label in LABELS.items():
        clean[labels == label] = INTENSITY[name]
    bias = bias_field(labels.shape, bias_amplitude)
    rng = np.random.default_rng(seed)
    real = clean * bias + rng.normal(0, sigma, labels.shape).astype(np.float32)
    imag = rng.normal(0, sigma, labels.shape).astype(np.float32)
    image = np.sqrt(real**2 + imag**2).astype(np.float32)  # Rician magnitude
    return SyntheticHead(image=image, truth=labels, bias=bias, affine=affine, sigma=sigma)


# --- DICOM ------------------------------------------------------------------------------


def _base(series_uid: str, number: int, *, rows: int, columns: int) -> Dataset:
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(number)])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = number
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RepetitionTime = 2300.0
    return ds


def slice_datasets(data: np.ndarray, *, row_cos: Sequence[float], col_cos: Sequence[float],
                   origin: Sequence[float], spacing: Sequence[float], seed: str = "head",
                   slope: float = 1.0, intercept: float = 0.0) -> list[Dataset]:
    """One instance per slice (per volume for 4D). `data[i, j, k(, t)]`: i along the row
    direction (columns of the image), j along the column direction, k along row x col;
    spacing = (column step i, row step j, slice step k) in mm; stored = (v - b) / m."""
    array = data if data.ndim == 4 else data[..., None]
    row_cos, col_cos = np.asarray(row_cos, float), np.asarray(col_cos, float)
    normal = np.cross(row_cos, col_cos)
    series_uid = generate_uid(entropy_srcs=[seed, "series"])
    out = []
    for t in range(array.shape[3]):
        for k in range(array.shape[2]):
            number = t * array.shape[2] + k + 1
            ds = _base(series_uid, number, rows=array.shape[1], columns=array.shape[0])
            ds.AcquisitionNumber = t + 1
            ds.ImageOrientationPatient = [*row_cos.tolist(), *col_cos.tolist()]
            ds.ImagePositionPatient = (np.asarray(origin) + normal * spacing[2] * k).tolist()
            ds.PixelSpacing = [spacing[1], spacing[0]]
            ds.SliceThickness = spacing[2]
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            stored = np.round((array[:, :, k, t].T - intercept) / slope)
            ds.PixelData = stored.clip(0, 65535).astype(np.uint16).tobytes()
            out.append(ds)
    return out


def lps_affine(*, row_cos: Sequence[float], col_cos: Sequence[float], origin: Sequence[float],
               spacing: Sequence[float]) -> np.ndarray:
    """The RAS affine of `slice_datasets`' array (before canonical reorientation)."""
    affine = np.eye(4)
    affine[:3, 0] = np.asarray(row_cos) * spacing[0]
    affine[:3, 1] = np.asarray(col_cos) * spacing[1]
    affine[:3, 2] = np.cross(row_cos, col_cos) * spacing[2]
    affine[:3, 3] = origin
    return LPS_TO_RAS @ affine


def write(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
