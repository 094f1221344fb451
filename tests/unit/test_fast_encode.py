"""`encode_part10` writes exactly what `dcmwrite(enforce_file_format=True)` writes."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom.dsutils import decode

from receiver import encode
from receiver.encode import encode_part10
from receiver.ingest import _normalised_file_meta
from receiver.pseudonymise import Pseudonymiser
from services.synthetic import iter_instances, small_study

KEY = b"k" * 32


def _with_extras(ds: Dataset, index: int) -> Dataset:
    """Sequences (kept, cleaned and removed ones), nested items and odd-length values."""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = f"1.2.3.4.{index}"
    nested = Dataset()
    nested.CodeValue = "113100"
    nested.CodingSchemeDesignator = "DCM"
    nested.CodeMeaning = "odd"
    item.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([item])
    request = Dataset()
    request.RequestedProcedureDescription = f"brain for {ds.PatientName}"
    ds.RequestAttributesSequence = Sequence([request])
    ds.ImageComments = "a comment of odd length"
    ds.WindowCenter = "2047"
    ds.add_new(0x00191010, "LO", "ACME SPECTRO")  # a private creator we do not keep
    ds.add_new(0x00191001, "DS", "1.5")
    return ds


def _wire(ds: Dataset, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _received(wire: bytes, transfer_syntax: UID) -> Dataset:
    """As pynetdicom hands a C-STORE data set to the handler, then pseudonymised."""
    ds = decode(io.BytesIO(wire), transfer_syntax.is_implicit_VR, True)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    Pseudonymiser(key=KEY).apply(ds)
    return ds


def _dcmwrite(ds: Dataset, meta: FileMetaDataset) -> bytes:
    ds.file_meta = meta
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _instances() -> list[Dataset]:
    spec = small_study("fast-encode", t1_slices=2, epi_slices=2, epi_volumes=1)
    return [
        _with_extras(ds, i) if i % 2 else ds
        for i, ds in enumerate(iter_instances(spec))
    ]


@pytest.mark.parametrize(
    ("transfer_syntax", "extras"),
    list(itertools.product([ImplicitVRLittleEndian, ExplicitVRLittleEndian], [False, True])),
)
def test_received_instance_encodes_as_dcmwrite(
    transfer_syntax: UID, extras: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fallback(ds: Dataset) -> bytes:
        raise AssertionError("a received instance must take the fast path")

    monkeypatch.setattr(encode, "_pydicom_part10", no_fallback)
    for index, original in enumerate(_instances()):
        if extras:
            original = _with_extras(original, index)
        wire = _wire(original, transfer_syntax.is_implicit_VR)
        fast_ds, slow_ds = _received(wire, transfer_syntax), _received(wire, transfer_syntax)
        fast = encode_part10(fast_ds, _normalised_file_meta(fast_ds))
        slow = _dcmwrite(slow_ds, _normalised_file_meta(slow_ds))
        assert fast == slow
        assert dcmread(io.BytesIO(fast)) == dcmread(io.BytesIO(slow))


def test_encapsulated_pixel_data_encodes_as_dcmwrite() -> None:
    original = _instances()[0]
    # One fragment after an empty basic offset table, as PS3.5 A.4 encapsulates it.
    original.PixelData = (
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\x00\xe0\x04\x00\x00\x00" + b"\x01\x02\x03\x04"
    )
    original["PixelData"].is_undefined_length = True
    original["PixelData"].VR = "OB"
    wire = _wire(original, implicit=False)
    fast_ds, slow_ds = _received(wire, JPEG2000Lossless), _received(wire, JPEG2000Lossless)
    fast = encode_part10(fast_ds, _normalised_file_meta(fast_ds))
    assert fast == _dcmwrite(slow_ds, _normalised_file_meta(slow_ds))


def test_in_memory_dataset_takes_dcmwrite_path() -> None:
    """A data set built in memory (`harmonet import` of generated data, tests) has no
    original encoding: pydicom converts every element, and so does the fallback."""
    ds = _instances()[1]
    Pseudonymiser(key=KEY).apply(ds)
    other = copy.deepcopy(ds)
    assert encode_part10(ds, _normalised_file_meta(ds)) == _dcmwrite(
        other, _normalised_file_meta(other)
    )


def test_same_instance_gives_same_bytes() -> None:
    original = _with_extras(_instances()[0], 3)
    wire = _wire(original, implicit=True)
    first, second = _received(wire, ImplicitVRLittleEndian), _received(wire, ImplicitVRLittleEndian)
    assert encode_part10(first, _normalised_file_meta(first)) == encode_part10(
        second, _normalised_file_meta(second)
    )
