"""DICOM Part 10 bytes of a stored instance, byte for byte what pydicom's `dcmwrite` writes.

`dcmwrite` spends ~1 ms per small instance in per-element Python, most of it on
elements the pseudonymiser never touched and that are still the received bytes
(pydicom's RawDataElement). This writes those from their raw value with a
packed header, hands every other element to pydicom's own `write_data_element`,
and falls back to `dcmwrite` whenever pydicom would re-encode the whole data set
(another transfer syntax or character set than the one it was read with,
deflate, big endian). Stored bytes must not depend on the path taken: the blob
store recognises a re-sent instance by its bytes.
"""

from __future__ import annotations

import struct
from typing import Final

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_file_meta_info
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

_PREAMBLE: Final = b"\x00" * 128 + b"DICM"
_IMPLICIT_HEADER: Final = struct.Struct("<HHL")
_EXPLICIT_SHORT_HEADER: Final = struct.Struct("<HH2sH")
_EXPLICIT_LONG_HEADER: Final = struct.Struct("<HH2s2xL")
_LONG_VRS: Final = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_PIXEL_DATA: Final = 0x7FE00010


def encode_part10(ds: Dataset, file_meta: FileMetaDataset) -> bytes:
    """`dcmwrite(buffer, ds, enforce_file_format=True)` with `ds.file_meta = file_meta`."""
    ds.file_meta = file_meta
    transfer_syntax: UID | None = file_meta.get("TransferSyntaxUID")
    if not _fast_path_applies(ds, transfer_syntax):
        return _pydicom_part10(ds)
    assert transfer_syntax is not None
    if "PixelData" in ds:  # as dcmwrite does (PS3.5 A.4): encapsulated means undefined length
        ds["PixelData"].is_undefined_length = transfer_syntax.is_compressed
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = False
    out.write(_PREAMBLE)
    out.write(_file_meta_bytes(file_meta))
    out.is_implicit_VR = transfer_syntax.is_implicit_VR
    _write_top_level(out, ds)
    return out.getvalue()


def _pydicom_part10(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _fast_path_applies(ds: Dataset, transfer_syntax: UID | None) -> bool:
    if transfer_syntax is None or not transfer_syntax.is_transfer_syntax:
        return False
    if transfer_syntax.is_private or transfer_syntax.is_deflated:
        return False
    if not transfer_syntax.is_little_endian:
        return False
    encoding = (transfer_syntax.is_implicit_VR, True)
    # write_dataset converts (and VR-corrects) every element in these cases.
    if ds.original_encoding != encoding:
        return False
    if ds.original_character_set != ds._character_set:
        return False
    preamble = getattr(ds, "preamble", None)
    if preamble and (len(preamble) != 128 or any(preamble)):
        return False
    # dcmwrite refuses command and file meta elements in the data set: let it say so.
    return not any(tag >> 16 in (0, 2) for tag in ds._dict)


def _file_meta_bytes(file_meta: FileMetaDataset) -> bytes:
    fast = _simple_file_meta_bytes(file_meta)
    if fast is not None:
        return fast
    # write_file_meta_info validates and completes (version, group length): let it,
    # on a copy, so the caller's file meta is not changed.
    meta = FileMetaDataset()
    for elem in file_meta:
        meta.add(elem)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


_META_VERSION: Final = _EXPLICIT_LONG_HEADER.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01"
_META_STRINGS: Final = {0x00020002: b"UI", 0x00020003: b"UI", 0x00020010: b"UI",
                        0x00020012: b"UI", 0x00020013: b"SH"}


def _simple_file_meta_bytes(file_meta: FileMetaDataset) -> bytes | None:
    """The normalised file meta (PS3.10 7.1) written directly; None for any other shape."""
    if set(file_meta._dict) != set(_META_STRINGS):
        return None
    body = bytearray(_META_VERSION)
    for tag, vr in _META_STRINGS.items():
        value = file_meta[tag].value
        if not isinstance(value, str) or not value.isascii() or not value:
            return None
        encoded = value.encode("ascii")
        if len(encoded) % 2:  # PS3.5 6.2: UI pads with NUL, the other strings with space
            encoded += b"\x00" if vr == b"UI" else b" "
        body += _EXPLICIT_SHORT_HEADER.pack(tag >> 16, tag & 0xFFFF, vr, len(encoded))
        body += encoded
    group_length = _EXPLICIT_SHORT_HEADER.pack(0x0002, 0x0000, b"UL", 4) + struct.pack(
        "<L", len(body)
    )
    return group_length + bytes(body)


def _write_top_level(out: DicomBytesIO, ds: Dataset) -> None:
    implicit = out.is_implicit_VR
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    elements = ds._dict
    for tag in sorted(elements):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue  # retired group length, as write_dataset skips it (PS3.5 7.2)
        elem: DataElement | RawDataElement | None = elements[tag]
        if isinstance(elem, RawDataElement) and _write_raw(out, elem, implicit=implicit):
            continue
        write_data_element(out, ds.get_item(tag), encodings)


def _write_raw(out: DicomBytesIO, elem: RawDataElement, *, implicit: bool) -> bool:
    """The raw element's header and received value; False to leave it to pydicom."""
    value = elem.value
    if value is None or elem.length == _UNDEFINED_LENGTH:
        return False  # deferred read, or a sequence / encapsulated pixel data
    length = len(value)
    tag = elem.tag
    if implicit:
        out.write(_IMPLICIT_HEADER.pack(tag >> 16, tag & 0xFFFF, length))
    else:
        vr = elem.VR
        if vr is None or len(vr) != 2:
            return False
        if vr in _LONG_VRS:
            out.write(_EXPLICIT_LONG_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length))
        elif length <= 0xFFFF:
            out.write(_EXPLICIT_SHORT_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length))
        else:
            return False  # pydicom re-labels it UN (PS3.5 6.2.2)
    out.write(value)
    return True
