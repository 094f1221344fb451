"""What each vendor stores outside the standard MR attributes, read from its private blocks.

Only the blocks the receiver keeps are read (Siemens "SIEMENS CSA HEADER" and "SIEMENS MR
HEADER", GE "GEMS_PARM_01", Philips "Philips Imaging DD 001"); what a vendor does not
store is None (unknown), never a default. Conventions, after dcm2niix (rordenlab/dcm2niix,
its GE/ and Siemens/ notes) and neurolabusc/dcm_qa_ge:

- Siemens (classic, VE and older): CSA image header `PhaseEncodingDirectionPositive`
  (1 -> +1, 0 -> -1) and `NumberOfImagesInMosaic` (else (0019,xx0A)); the CSA series header
  `MrPhoenixProtocol` ASCCONV: `sPat.lAccelFactPE` (in-plane parallel factor),
  `sSliceAcceleration.lMultiBandFactor` (product SMS; CMRR sequences keep it in a WIP
  block, so its absence is unknown, not 1) and `sKSpace.ucPhasePartialFourier`
  (0x01 -> 4/8, 0x02 -> 5/8, 0x04 -> 6/8, 0x08 -> 7/8, 0x10 -> 8/8 = off).
  Siemens Enhanced (XA) keeps polarity in (0021,111C) of a block the receiver drops: unknown.
- GE: `Asset R Factors` (0043,xx83), first value = 1 / in-plane factor; `Multiband
  parameters` (0043,xxB6), first value = HyperBand factor; polarity from the standard
  Rectilinear Phase Encode Reordering (0018,9034), written since Rx27: LINEAR -> +1,
  REVERSE_LINEAR -> -1 (dcm2niix's "unflipped"/"flipped"); older releases: unknown.
  GE writes whether partial Fourier is on (ScanOptions PFF) but not the fraction: unknown.
- Philips: no phase-encoding polarity, multiband or partial Fourier fraction in DICOM:
  unknown. `Number of Slices MR` (2001,xx18) and `Number of Dynamic Scans` (2001,xx81)
  count slices and volumes of classic (one frame per instance) series.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

with warnings.catch_warnings():
    # nibabel.nicom warns on import that its DICOM *volume* readers are experimental;
    # only the CSA parser is used here.
    warnings.simplefilter("ignore")
    from nibabel.nicom import csareader

_parse_csa: Callable[[bytes], dict[str, Any]] = csareader.read
log = logging.getLogger(__name__)

SIEMENS_CSA = "SIEMENS CSA HEADER"
SIEMENS_MR = "SIEMENS MR HEADER"
GE_PARM = "GEMS_PARM_01"
PHILIPS_IMAGING = "Philips Imaging DD 001"

# sKSpace.ucPhasePartialFourier bit -> fraction of k-space acquired
SIEMENS_PARTIAL_FOURIER = {0x01: 0.5, 0x02: 0.625, 0x04: 0.75, 0x08: 0.875, 0x10: 1.0}
_ASCCONV = re.compile(r"### ASCCONV BEGIN[^\n]*\n(.*?)### ASCCONV END", re.DOTALL)
_ASCCONV_LINE = re.compile(r"^\s*([A-Za-z_][\w.\[\]]*)\s*=\s*(.*?)\s*(?:#.*)?$")


@dataclass(frozen=True)
class VendorValues:
    """Derived acquisition values; None where the vendor does not say."""

    phase_encoding_polarity: int | None = None
    parallel_reduction_factor_in_plane: float | None = None
    multiband_factor: int | None = None
    partial_fourier: float | None = None
    mosaic_slices: int | None = None
    slices: int | None = None
    volumes: int | None = None


def normalise_manufacturer(name: str | None) -> str | None:
    if not name or not name.strip():
        return None
    lowered = name.strip().lower()
    for vendor, pattern in (("siemens", "siemens"), ("ge", r"^ge\b|general electric"),
                            ("philips", "philips")):
        if re.search(pattern, lowered):
            return vendor
    return lowered


def vendor_values(ds: Dataset, manufacturer: str | None) -> VendorValues:
    readers = {"siemens": siemens_values, "ge": ge_values, "philips": philips_values}
    reader = readers.get(manufacturer or "")
    return reader(ds) if reader is not None else VendorValues()


# --- Siemens ------------------------------------------------------------------------------


def siemens_values(ds: Dataset) -> VendorValues:
    image = read_csa(ds, element=0x10)
    protocol = ascconv(_csa_text(read_csa(ds, element=0x20), "MrPhoenixProtocol", "MrProtocol"))
    positive = _csa_int(image, "PhaseEncodingDirectionPositive")
    mosaic = _csa_int(image, "NumberOfImagesInMosaic")
    if mosaic is None:
        mosaic = _int(private_value(ds, 0x0019, SIEMENS_MR, 0x0A))
    partial = _int(protocol.get("sKSpace.ucPhasePartialFourier"))
    return VendorValues(
        phase_encoding_polarity={1: 1, 0: -1}.get(positive) if positive is not None else None,
        parallel_reduction_factor_in_plane=_float(protocol.get("sPat.lAccelFactPE")),
        multiband_factor=_int(protocol.get("sSliceAcceleration.lMultiBandFactor")),
        partial_fourier=SIEMENS_PARTIAL_FOURIER.get(partial) if partial is not None else None,
        mosaic_slices=mosaic if mosaic and mosaic > 0 else None,
    )


def read_csa(ds: Dataset, *, element: int) -> dict[str, Any] | None:
    """The CSA header at (0029,xx10) (image) or (0029,xx20) (series), parsed; None if absent."""
    raw = private_value(ds, 0x0029, SIEMENS_CSA, element)
    if not isinstance(raw, bytes) or not raw:
        return None
    try:
        parsed = _parse_csa(raw)
    except Exception as exc:  # nibabel raises CSAReadError, AssertionError, struct.error...
        log.debug("unreadable CSA header", extra={"error": repr(exc)})
        return None
    return parsed


def ascconv(text: str | None) -> dict[str, str]:
    """`name -> raw value` from the ASCCONV block of a MrPhoenixProtocol."""
    if not text:
        return {}
    block = _ASCCONV.search(text)
    values: dict[str, str] = {}
    for line in (block.group(1) if block else "").splitlines():
        match = _ASCCONV_LINE.match(line)
        if match:
            values[match.group(1)] = match.group(2).strip('"')
    return values


def _csa_items(csa: dict[str, Any] | None, name: str) -> list[Any]:
    tag = (csa or {}).get("tags", {}).get(name)
    items = tag.get("items") if isinstance(tag, dict) else None
    return list(items) if isinstance(items, list) else []


def _csa_int(csa: dict[str, Any] | None, name: str) -> int | None:
    items = _csa_items(csa, name)
    return _int(items[0]) if items else None


def _csa_text(csa: dict[str, Any] | None, *names: str) -> str | None:
    for name in names:
        items = _csa_items(csa, name)
        if items and isinstance(items[0], str):
            return items[0]
    return None


# --- GE -----------------------------------------------------------------------------------


def ge_values(ds: Dataset) -> VendorValues:
    reordering = _text(ds.get("RectilinearPhaseEncodeReordering"))
    asset = _first(private_value(ds, 0x0043, GE_PARM, 0x83))
    asset_r = _float(asset)
    multiband = _int(_first(private_value(ds, 0x0043, GE_PARM, 0xB6)))
    return VendorValues(
        phase_encoding_polarity={"LINEAR": 1, "REVERSE_LINEAR": -1}.get(reordering or ""),
        parallel_reduction_factor_in_plane=round(1.0 / asset_r, 3) if asset_r else None,
        multiband_factor=multiband if multiband and multiband > 0 else None,
    )


# --- Philips ------------------------------------------------------------------------------


def philips_values(ds: Dataset) -> VendorValues:
    slices = _int(private_value(ds, 0x2001, PHILIPS_IMAGING, 0x18))
    volumes = _int(private_value(ds, 0x2001, PHILIPS_IMAGING, 0x81))
    return VendorValues(
        slices=slices if slices and slices > 0 else None,
        volumes=volumes if volumes and volumes > 0 else None,
    )


# --- private elements ---------------------------------------------------------------------


def private_value(ds: Dataset, group: int, creator: str, offset: int) -> Any:
    """The value of a private element found by its creator, not by a fixed block number."""
    try:
        value = ds.private_block(group, creator)[offset].value
    except (KeyError, ValueError, TypeError):
        return None
    return value


def _first(value: Any) -> Any:
    if isinstance(value, bytes):
        value = _decode(value)
    if isinstance(value, str):
        return value.split("\\")[0]
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        items = list(value)
        return items[0] if items else None
    return value


def _decode(raw: bytes) -> str:
    return raw.decode("latin-1").strip("\x00 ")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = _decode(value)
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def _float(value: Any) -> float | None:
    value = _first(value)
    try:
        return float(value) if value is not None and str(value).strip() else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    raw = value
    value = _first(value)
    if isinstance(value, str) and value.strip().lower().startswith("0x"):  # ASCCONV hex
        try:
            return int(value.strip(), 16)
        except ValueError:
            return None
    number = _float(value)
    if number is not None:
        return int(number) if number.is_integer() else None
    if isinstance(raw, bytes) and len(raw) == 4:  # an SL/UL element read as UN
        return int(struct.unpack("<i", raw)[0])
    return None
