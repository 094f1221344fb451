"""Synthetic MR studies with known ground truth, for tests, benchmarks and the demo.

Every UID is derived from a seed, so the same call builds byte-identical files.
The headers carry the identifying attributes a real scanner writes (name, ID,
birth date, institution, physicians, dates) so pseudonymisation can be checked.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass(frozen=True)
class SeriesSpec:
    description: str
    protocol_name: str
    sequence_name: str
    slices: int
    volumes: int = 1
    rows: int = 64
    columns: int = 64
    repetition_time_ms: float = 2000.0
    echo_time_ms: float = 30.0
    flip_angle_deg: float = 90.0
    slice_thickness_mm: float = 3.0
    pixel_spacing_mm: tuple[float, float] = (3.0, 3.0)
    acquisition_type: str = "2D"
    scanning_sequence: str = "EP"
    sequence_variant: str = "SK"
    phase_encoding_direction: str = "COL"
    # Pixel content: (volume, slice, rng) -> (rows, columns) array; None = noise around 400.
    image: Callable[[int, int, np.random.Generator], np.ndarray] | None = None


@dataclass(frozen=True)
class Subject:
    patient_name: str = "DOE^JANE"
    patient_id: str = "PID-0001"
    birth_date: str = "19540317"
    sex: str = "F"
    age: str = "070Y"


@dataclass(frozen=True)
class ScannerSpec:
    manufacturer: str = "SIEMENS"
    model: str = "Prisma"
    serial: str = "166012"
    software: str = "syngo MR XA30"
    station_name: str = "MRC-PRISMA-1"
    institution: str = "Ospedale Niguarda"
    field_strength_t: float = 3.0


T1_MPRAGE = SeriesSpec(
    description="t1_mprage_sag_1mm",
    protocol_name="t1_mprage_sag_1mm",
    sequence_name="*tfl3d1_16ns",
    slices=176,
    rows=256,
    columns=256,
    repetition_time_ms=2300.0,
    echo_time_ms=2.98,
    flip_angle_deg=9.0,
    slice_thickness_mm=1.0,
    pixel_spacing_mm=(1.0, 1.0),
    acquisition_type="3D",
    scanning_sequence="GR\\IR",
    sequence_variant="SK\\SP\\MP",
    phase_encoding_direction="ROW",
)
BOLD_EPI = SeriesSpec(
    description="bold_rest",
    protocol_name="bold_rest",
    sequence_name="epfid2d1_64",
    slices=36,
    volumes=100,
)


@dataclass(frozen=True)
class StudySpec:
    seed: str = "demo"
    subject: Subject = field(default_factory=Subject)
    scanner: ScannerSpec = field(default_factory=ScannerSpec)
    study_date: str = "20261103"
    series: Sequence[SeriesSpec] = (T1_MPRAGE, BOLD_EPI)

    def uid(self, *parts: object) -> UID:
        return generate_uid(entropy_srcs=[self.seed, *(str(p) for p in parts)])


def small_study(
    seed: str = "small", *, t1_slices: int = 8, epi_slices: int = 4, epi_volumes: int = 3
) -> StudySpec:
    """A tiny 2-series study for fast tests (64x64 slices)."""
    t1 = SeriesSpec(**{**T1_MPRAGE.__dict__, "slices": t1_slices, "rows": 64, "columns": 64})
    bold = SeriesSpec(**{**BOLD_EPI.__dict__, "slices": epi_slices, "volumes": epi_volumes})
    return StudySpec(seed=seed, series=(t1, bold))


def iter_instances(spec: StudySpec) -> Iterator[Dataset]:
    """Every instance of the study, series by series, volume by volume, slice by slice."""
    rng = np.random.default_rng(zlib.crc32(spec.seed.encode()))
    study_uid = spec.uid("study")
    for number, series in enumerate(spec.series, start=1):
        series_uid = spec.uid("series", number)
        for volume in range(series.volumes):
            for slice_index in range(series.slices):
                instance = volume * series.slices + slice_index + 1
                ds = _instance(
                    spec,
                    series,
                    number=number,
                    instance=instance,
                    slice_index=slice_index,
                    volume=volume,
                )
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                if series.image is None:
                    pixels = rng.normal(400, 40, (series.rows, series.columns))
                else:
                    pixels = series.image(volume, slice_index, rng)
                ds.PixelData = np.round(pixels).clip(0, 4095).astype(np.uint16).tobytes()
                yield ds


def write_study(spec: StudySpec, out_dir: Path) -> list[Path]:
    """Write the study as DICOM Part 10 files, one per instance; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in iter_instances(spec):
        path = out_dir / f"{ds.SeriesNumber:03d}_{ds.InstanceNumber:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _instance(
    spec: StudySpec,
    series: SeriesSpec,
    *,
    number: int,
    instance: int,
    slice_index: int,
    volume: int,
) -> Dataset:
    sop_uid = spec.uid("sop", number, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = spec.study_date
    ds.StudyTime = "093000"
    ds.SeriesTime = f"{93000 + number * 100:06d}"
    ds.AcquisitionTime = ds.ContentTime = ds.SeriesTime
    ds.AccessionNumber = f"ACC{zlib.crc32(spec.seed.encode()) % 10**8:08d}"
    ds.StudyID = "1"
    ds.StudyDescription = f"NEURO^{spec.subject.patient_name} research"
    ds.InstitutionName = spec.scanner.institution
    ds.InstitutionAddress = "Piazza Ospedale Maggiore 3, Milano"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.PerformingPhysicianName = "QUINN^MICHAELA"
    ds.OperatorsName = "TECH^ANNA"
    ds.StationName = spec.scanner.station_name
    ds.Manufacturer = spec.scanner.manufacturer
    ds.ManufacturerModelName = spec.scanner.model
    ds.DeviceSerialNumber = spec.scanner.serial
    ds.SoftwareVersions = spec.scanner.software
    ds.DateOfLastCalibration = "20261020"
    ds.TimeOfLastCalibration = "070000"
    ds.PatientName = spec.subject.patient_name
    ds.PatientID = spec.subject.patient_id
    ds.PatientBirthDate = spec.subject.birth_date
    ds.PatientSex = spec.subject.sex
    ds.PatientAge = spec.subject.age
    ds.PatientWeight = 64.0
    ds.PatientSize = 1.65
    ds.OtherPatientIDs = f"{spec.subject.patient_id}-OLD"
    ds.SeriesDescription = series.description
    ds.ProtocolName = series.protocol_name
    ds.SequenceName = series.sequence_name
    ds.SeriesNumber = number
    ds.InstanceNumber = instance
    ds.AcquisitionNumber = volume + 1
    ds.ScanningSequence = series.scanning_sequence
    ds.SequenceVariant = series.sequence_variant
    ds.MRAcquisitionType = series.acquisition_type
    ds.RepetitionTime = series.repetition_time_ms
    ds.EchoTime = series.echo_time_ms
    ds.FlipAngle = series.flip_angle_deg
    ds.SliceThickness = series.slice_thickness_mm
    ds.SpacingBetweenSlices = series.slice_thickness_mm
    ds.MagneticFieldStrength = spec.scanner.field_strength_t
    ds.InPlanePhaseEncodingDirection = series.phase_encoding_direction
    ds.PixelSpacing = list(series.pixel_spacing_mm)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-96.0, -96.0, -50.0 + slice_index * series.slice_thickness_mm]
    ds.SliceLocation = -50.0 + slice_index * series.slice_thickness_mm
    ds.FrameOfReferenceUID = spec.uid("for")
    ds.Rows = series.rows
    ds.Columns = series.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    # A private block a Siemens scanner writes; the CSA header itself is binary.
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", b"SV10\x04\x03\x02\x01" + b"\x00" * 8)
    other = ds.private_block(0x0033, "ACME PATIENT NOTES", create=True)
    other.add_new(0x01, "LO", f"notes on {spec.subject.patient_name}")
    return ds


def fbirn_phantom(
    *, seed: str, sessions_signal: float = 1000.0, temporal_noise: float = 10.0,
    drift_percent: float = 0.0, volumes: int = 40, slices: int = 5, matrix: int = 32,
) -> StudySpec:
    """An fBIRN-style agar sphere EPI run: known signal, white temporal noise of known
    sigma (SFNR = signal / noise) and a known linear drift over the run (percent)."""
    centre = (matrix - 1) / 2
    yy, xx = np.mgrid[:matrix, :matrix]
    disk = ((yy - centre) ** 2 + (xx - centre) ** 2) <= (0.4 * matrix) ** 2

    def image(volume: int, slice_index: int, rng: np.random.Generator) -> np.ndarray:
        level = sessions_signal * (1 + drift_percent / 100 * volume / max(1, volumes - 1))
        noise = rng.normal(0, temporal_noise, (matrix, matrix))
        return np.where(disk, level + noise, 5 + np.abs(noise) * 0.2)

    run = SeriesSpec(
        description="fBIRN stability EPI", protocol_name="fbirn_stability",
        sequence_name="epfid2d1_32", slices=slices, volumes=volumes, rows=matrix,
        columns=matrix, pixel_spacing_mm=(4.0, 4.0), slice_thickness_mm=4.0, image=image,
    )
    return StudySpec(seed=seed, subject=Subject(patient_name="FBIRN^PHANTOM",
                                                patient_id="PHANTOM-FBIRN", sex="O", age=""),
                     series=(run,))
