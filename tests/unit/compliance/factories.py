"""Vendor-realistic MR headers with known acquisition parameters, for compliance tests.

Siemens classic carries a real CSA2 image header and a CSA series header whose
MrPhoenixProtocol holds an ASCCONV block; Siemens Enhanced (XA) is one multi-frame
instance with functional groups; GE and Philips carry their private blocks. Every
dataset goes through a Part 10 write/read round trip like the blob store's files.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@dataclass(frozen=True)
class Acquisition:
    """What the scanner did; None omits the attribute (e.g. a series without timing)."""

    description: str = "t1_mprage_sag_1mm"
    sequence_name: str = "*tfl3d1_16ns"
    repetition_time: float | None = 2300.0
    echo_time: float | None = 2.98
    inversion_time: float | None = 900.0
    flip_angle: float | None = 9.0
    slice_thickness: float = 1.0
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    rows: int = 256
    columns: int = 256
    phase_encoding: str = "ROW"
    polarity: int = 1  # +1: toward increasing DICOM index
    acquisition_type: str = "3D"
    scanning_sequence: str = "GR\\IR"
    sequence_variant: str = "SK\\SP\\MP"
    slices: int = 4
    volumes: int = 1
    series_number: int = 1
    parallel_factor: int = 2
    multiband_factor: int = 1
    software: str = "syngo MR E11"
    serial: str = "166012"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def but(self, **changes: Any) -> Acquisition:
        return replace(self, **changes)


T1 = Acquisition()
BOLD = Acquisition(
    description="bold_rest", sequence_name="epfid2d1_64", repetition_time=2000.0,
    echo_time=30.0, inversion_time=None, flip_angle=90.0, slice_thickness=3.0,
    pixel_spacing=(3.0, 3.0), rows=64, columns=64, phase_encoding="COL",
    acquisition_type="2D", scanning_sequence="EP", sequence_variant="SK", slices=36,
    volumes=5, series_number=2, multiband_factor=3,
)


# --- Siemens CSA2 -------------------------------------------------------------------------


def encode_csa2(tags: Mapping[str, tuple[str, Sequence[str]]]) -> bytes:
    """A CSA2 header: "SV10", 4 unused bytes, n_tags, 77; per tag name[64] vm vr[4] syngodt
    n_items 77, then per item four int32 (length, length, 77, length) and the value, null
    terminated and padded to 4 bytes (the layout nibabel.nicom.csareader reads)."""
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<2I", len(tags), 77)
    for name, (vr, values) in tags.items():
        out += struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0,
                           len(values), 77)
        for value in values:
            data = value.encode("latin-1") + b"\x00"
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data + b"\x00" * (-len(data) % 4)
    return bytes(out)


def phoenix_protocol(values: Mapping[str, str]) -> str:
    lines = [f"{name:<40} = {value}" for name, value in values.items()]
    return "### ASCCONV BEGIN object=MrProtDataImpl@MrProtocolData version=51130001 ###\n" + (
        "\n".join(lines) + "\n### ASCCONV END ###\n"
    )


def siemens_phoenix(acq: Acquisition, *, partial_fourier: int = 0x04) -> dict[str, str]:
    values = {
        "tProtocolName": f'"{acq.description}"',
        "sPat.lAccelFactPE": str(acq.parallel_factor),
        "sPat.ucPATMode": "0x02",
        "sKSpace.ucPhasePartialFourier": f"0x{partial_fourier:02x}",
        "alTR[0]": str(int((acq.repetition_time or 0) * 1000)),
    }
    if acq.multiband_factor > 1:
        values["sSliceAcceleration.lMultiBandFactor"] = str(acq.multiband_factor)
    return values


# --- datasets -------------------------------------------------------------------------------


def _base(acq: Acquisition, sop_class: str, *, manufacturer: str, model: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[acq.description, str(acq.series_number)])
    ds.SeriesNumber = acq.series_number
    ds.SeriesDescription = ds.ProtocolName = acq.description
    ds.Manufacturer, ds.ManufacturerModelName = manufacturer, model
    ds.SoftwareVersions, ds.DeviceSerialNumber = acq.software, acq.serial
    ds.MagneticFieldStrength = 3.0
    ds.MRAcquisitionType = acq.acquisition_type
    ds.Rows, ds.Columns = acq.rows, acq.columns
    for keyword, value in acq.extra.items():
        setattr(ds, keyword, value)
    return ds


def _classic(acq: Acquisition, ds: Dataset, *, instance: int) -> Dataset:
    slice_index = (instance - 1) % acq.slices
    ds.InstanceNumber = instance
    ds.AcquisitionNumber = (instance - 1) // acq.slices + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SequenceName = acq.sequence_name
    ds.ScanningSequence, ds.SequenceVariant = acq.scanning_sequence, acq.sequence_variant
    for keyword, value in (("RepetitionTime", acq.repetition_time), ("EchoTime", acq.echo_time),
                           ("InversionTime", acq.inversion_time),
                           ("FlipAngle", acq.flip_angle)):
        if value is not None:
            setattr(ds, keyword, value)
    ds.SliceThickness = ds.SpacingBetweenSlices = acq.slice_thickness
    ds.PixelSpacing = list(acq.pixel_spacing)
    ds.InPlanePhaseEncodingDirection = acq.phase_encoding
    ds.AcquisitionMatrix = _matrix(acq)
    ds.PixelBandwidth = 240.0
    ds.EchoTrainLength = 1
    ds.ImageOrientationPatient = AXIAL
    ds.ImagePositionPatient = [-96.0, -96.0, -50.0 + slice_index * acq.slice_thickness]
    return ds


def _matrix(acq: Acquisition) -> list[int]:
    if acq.phase_encoding == "COL":
        return [acq.rows, 0, 0, acq.columns]
    return [0, acq.columns, acq.rows, 0]


def siemens(acq: Acquisition, *, instance: int = 1, mosaic: bool = False,
            partial_fourier: int = 0x04, csa: bool = True) -> Dataset:
    ds = _classic(acq, _base(acq, MRImageStorage, manufacturer="SIEMENS", model="Prisma"),
                  instance=instance)
    ds.private_block(0x0029, "SIEMENS MEDCOM HEADER2", create=True)  # CSA lands at xx11
    mr = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    mr.add_new(0x28, "FD", 30.0)  # BandwidthPerPixelPhaseEncode
    image_tags: dict[str, tuple[str, Sequence[str]]] = {
        "PhaseEncodingDirectionPositive": ("IS", ["1" if acq.polarity > 0 else "0"]),
        "BandwidthPerPixelPhaseEncode": ("FD", ["30.0"]),
        "SliceNormalVector": ("FD", ["0.0", "0.0", "1.0"]),
    }
    if mosaic:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.InstanceNumber = ds.AcquisitionNumber = instance
        image_tags["NumberOfImagesInMosaic"] = ("US", [str(acq.slices)])
        mr.add_new(0x0A, "US", acq.slices)
    if csa:
        block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        block.add_new(0x10, "OB", encode_csa2(image_tags))
        phoenix = phoenix_protocol(siemens_phoenix(acq, partial_fourier=partial_fourier))
        block.add_new(0x20, "OB", encode_csa2({"MrPhoenixProtocol": ("UN", [phoenix])}))
    return roundtrip(ds)


def ge(acq: Acquisition, *, instance: int = 1, reordering: str | None = "auto",
       implicit: bool = False) -> Dataset:
    """GE: `reordering` "auto" writes (0018,9034) from `acq.polarity`; None omits it (pre-Rx27)."""
    ds = _base(acq, MRImageStorage, manufacturer="GE MEDICAL SYSTEMS", model="DISCOVERY MR750")
    ds = _classic(acq, ds, instance=instance)
    ds.SoftwareVersions = ["27", "LX", acq.software]
    ds.AcquisitionNumber = 1  # GE numbers instances, not acquisitions
    if acq.volumes > 1:
        ds.NumberOfTemporalPositions = acq.volumes
    if reordering == "auto":
        reordering = "LINEAR" if acq.polarity > 0 else "REVERSE_LINEAR"
    if reordering is not None:
        ds.RectilinearPhaseEncodeReordering = reordering
    parm = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    parm.add_new(0x2C, "SS", 636)  # effective echo spacing, us
    parm.add_new(0x83, "DS", [f"{1 / acq.parallel_factor:.6f}", "1"])  # Asset R factors
    parm.add_new(0xB6, "LO", [str(acq.multiband_factor), "4", "19", "", "", ""])
    acqu = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    acqu.add_new(0x9C, "LO", "epiRT" if acq.acquisition_type == "2D" else "efgre3d")
    return roundtrip(ds, implicit=implicit)


def philips(acq: Acquisition, *, instance: int = 1) -> Dataset:
    ds = _base(acq, MRImageStorage, manufacturer="Philips Medical Systems", model="Ingenia")
    ds = _classic(acq, ds, instance=instance)
    ds.AcquisitionNumber = 1
    imaging = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
    imaging.add_new(0x18, "SL", acq.slices)  # Number of Slices MR
    imaging.add_new(0x81, "IS", acq.volumes)  # Number of Dynamic Scans
    imaging.add_new(0x13, "SL", 1)  # EPI factor
    mr = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    mr.add_new(0x20, "SL", acq.slices)
    return roundtrip(ds)


def siemens_enhanced(acq: Acquisition, *, volume: int = 1) -> Dataset:
    """One XA-style multi-frame instance holding one volume of `acq.slices` frames."""
    ds = _base(acq, EnhancedMRImageStorage, manufacturer="Siemens Healthineers",
               model="MAGNETOM Prisma")
    ds.InstanceNumber = volume
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.PulseSequenceName = acq.sequence_name
    ds.NumberOfFrames = acq.slices
    ds.SharedFunctionalGroupsSequence = DicomSequence([_shared_groups(acq)])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [_frame_group(acq, index, volume) for index in range(acq.slices)]
    )
    return roundtrip(ds)


def _item(**attributes: Any) -> DicomSequence:
    item = Dataset()
    for keyword, value in attributes.items():
        if value is not None:
            setattr(item, keyword, value)
    return DicomSequence([item])


def _shared_groups(acq: Acquisition) -> Dataset:
    group = Dataset()
    group.PixelMeasuresSequence = _item(PixelSpacing=list(acq.pixel_spacing),
                                        SliceThickness=acq.slice_thickness,
                                        SpacingBetweenSlices=acq.slice_thickness)
    group.PlaneOrientationSequence = _item(ImageOrientationPatient=AXIAL)
    group.MRTimingAndRelatedParametersSequence = _item(
        RepetitionTime=acq.repetition_time, FlipAngle=acq.flip_angle, EchoTrainLength=1)
    freq, phase = (acq.columns, acq.rows) if acq.phase_encoding == "COL" else (
        acq.rows, acq.columns)
    group.MRFOVGeometrySequence = _item(
        InPlanePhaseEncodingDirection=acq.phase_encoding,
        MRAcquisitionFrequencyEncodingSteps=freq, MRAcquisitionPhaseEncodingStepsInPlane=phase)
    group.MRModifierSequence = _item(
        ParallelAcquisition="YES", ParallelReductionFactorInPlane=float(acq.parallel_factor),
        PartialFourier="NO", InversionRecovery="YES" if acq.inversion_time else "NO",
        InversionTimes=[acq.inversion_time] if acq.inversion_time else None)
    group.MRImagingModifierSequence = _item(PixelBandwidth=240.0)
    return group


def _frame_group(acq: Acquisition, index: int, volume: int) -> Dataset:
    group = Dataset()
    group.FrameContentSequence = _item(DimensionIndexValues=[volume, index + 1])
    group.PlanePositionSequence = _item(
        ImagePositionPatient=[-96.0, -96.0, -50.0 + index * acq.slice_thickness])
    group.MREchoSequence = _item(EffectiveEchoTime=acq.echo_time)
    return group


def roundtrip(ds: Dataset, *, implicit: bool = False) -> Dataset:
    """Write as Part 10 and read back without pixel data, as the service reads blobs."""
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (
        ExplicitVRLittleEndian)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, str(ds.InstanceNumber)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer, stop_before_pixels=True)


Factory = Callable[..., Dataset]


def series_headers(factory: Factory, acq: Acquisition, **options: Any) -> tuple[
    list[Dataset], int
]:
    """First, middle and last instance of a classic series (as the service samples them)."""
    count = acq.volumes if options.get("mosaic") else acq.slices * acq.volumes
    picks = sorted({1, count // 2 + 1, count})
    return [factory(acq, instance=number, **options) for number in picks], count
