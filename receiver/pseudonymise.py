"""Pseudonymise one DICOM instance in place, before it touches disk.

Owns the de-identification every received instance goes through: the DICOM PS3.15
Annex E Basic Application Level Confidentiality Profile with the options Retain
Device Identity, Retain Patient Characteristics, Retain Longitudinal Temporal
Information with Modified Dates, Clean Descriptors and Retain Safe Private, plus
keyed, deterministic pseudonyms for the subject and for every UID.

Where the actions come from
    The Basic Profile column of Table E.1-1 is dicom-anonymizer's ``dicomfields_2026c``.
    The option columns are not in that library: ``RETAIN_DEVICE_IDENTITY``,
    ``RETAIN_PATIENT_CHARACTERISTICS`` and ``CLEANED_DESCRIPTORS`` below are ours and
    name each attribute as the standard does. "A requirement for an Option, when
    implemented, overrides any requirement for the underlying Profile" (E.1.1).

Compound actions (we do not look up the IOD, so we take the strictest action that is
still valid for the attribute's type in any Storage IOD):
    X/Z, Z/D, X/Z/D -> Z (present-but-empty stays valid for Type 2 and 3);
    X/D -> D (dummy, valid for Type 1); D or X/D on a sequence -> X (no meaningful dummy
    item exists; in image IODs those sequences are Type 3);
    X/Z/U* -> keep the sequence and replace every UID inside it (references stay usable).

Decisions
    * Subject: PatientID and PatientName (and Clinical Trial Subject ID) become
      ``subject_id(PatientID)``. Without a PatientID the basis is the StudyInstanceUID
      (prefixed with a backslash, which no LO value can contain), so the study still
      maps to one subject; such a subject can not be linked to the same person's
      other studies. PatientID and PatientName are added when missing (Type 2).
    * UIDs: every U attribute, plus - per E.1.1 Note 4 - any other UI value outside
      the DICOM root (1.2.840.10008) except class, transfer syntax and coding scheme
      UIDs, becomes ``uid(original)``; deterministic, so references between instances
      stay consistent across pushes.
    * Dates: every DA and DT, at any depth, is shifted by ``date_offset_days`` of the
      original PatientID (Note 4: by VR, not only the listed attributes); DT keeps its
      time and offset parts, partial DT values are shifted at their precision and an
      unparsable value is emptied. TM values are kept: a time of day carries no
      identity once the date is shifted. Patient's Birth Date is emptied (Z, no option
      keeps it) after Patient's Age has been computed from it when the age is missing.
    * Calibration dates: Retain Device Identity says K for Date/DateTime of Last
      Calibration, Retain Longitudinal ... Modified Dates says C. We apply C - shift by
      the same per-subject offset - because a real calibration date next to shifted
      scan dates gives the offset away (real - shifted) and with it every real date of
      the subject, and because the scan-to-calibration interval QC needs stays exact.
      Time of Last Calibration is kept, like every TM. Residual risk: two subjects
      scanned on one scanner after the same calibration show different shifted
      calibration dates, and the difference is the difference of their offsets, so
      whoever knows one subject's real dates can work out the other's.
    * Descriptors: ``CLEANED_DESCRIPTORS`` (Series Description, Protocol Name, Study
      Description, ...) plus Sequence Name (not in E.1-1; cleaned like its neighbours)
      are kept but cleaned: name components, PatientID, Other Patient IDs, Accession
      Number and anything that parses as a calendar date are cut out. Everything else
      Clean Descriptors would clean (comments, histories, reasons, diagnoses, Request
      Attributes Sequence, RT labels) is removed as the Basic Profile says.
    * Identifiers copied into kept free text: every other LO/SH/ST/LT/UT/UC value the
      profile keeps (e.g. Acquisition Device Processing Description, Code Meaning, Study
      Comments a console fills in) has the patient's name components, IDs and Accession
      Number cut out like a descriptor's (dates are left alone there). The Basic Profile
      keeps them as carrying no identity; an operator typing the patient's name into
      one makes them carry it (found by the marker audit in tests/faults). Attributes
      the Retain Device Identity and Patient Characteristics options keep are not
      touched.
    * Patient module (group 0010): besides the table, any attribute not known to be
      harmless is removed, which also covers ones the library's list lacks (e.g.
      Patient's Birth Date in Alternative Calendar).
    * Unknown standard attributes (not in pydicom's dictionary) are removed, any PN the
      table does not list (e.g. Evaluator Name) is emptied, group lengths are removed
      (they would be stale).
    * Curves (50xx) are removed; overlays (60xx): the table removes Overlay Data and
      Overlay Comments, we remove the whole group so no Overlay Plane without data is
      left behind.
    * Private attributes: removed, except the vendor blocks in ``SAFE_PRIVATE_BLOCKS``
      (matched by group and private creator) that later services read acquisition
      parameters from. Free-text elements of those blocks (LT/ST/UT in pydicom's private
      dictionary) and GE's scanner study identifiers are dropped; UI values in them are
      replaced by ``uid()``. Philips 2001/2005 blocks are kept whole, nested sequences
      included and not walked. Residual risk: vendor blocks are not specified and can carry text and
      identifiers - e.g. the Siemens CSA series header's MrPhoenixProtocol holds
      tReferenceImage UIDs, which embed the scanner serial and the acquisition
      date-time. Strictly, Retain Safe Private (113111) means attributes known to be
      safe; whole blocks are a wider claim than that.
    * File Meta: Media Storage SOP Instance UID follows the new SOP Instance UID, AE
      titles, presentation addresses and private information are removed, the
      preamble is zeroed (E.1.1 step 7).
    * The output depends only on the input, the key and PROFILE_VERSION, so a re-sent
      instance encodes to the same bytes (the store deduplicates on that), across
      HarmoNet upgrades too unless the profile itself changed.
    * Nothing here logs a value; original identifiers only live in process memory
      (the descriptor-cleaning and UID caches).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table_e1_1
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import PersonName

__all__ = [
    "CLEANED_DESCRIPTORS",
    "RETAIN_DEVICE_IDENTITY",
    "RETAIN_PATIENT_CHARACTERISTICS",
    "SAFE_PRIVATE_BLOCKS",
    "Action",
    "PrivateBlock",
    "PseudonymisationError",
    "Pseudonymiser",
    "action_for",
]


class PseudonymisationError(ValueError):
    """The instance can not be pseudonymised (no PatientID and no StudyInstanceUID)."""


class Action(enum.Enum):
    """What happens to one attribute."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"
    UID_OUTSIDE_DICOM_ROOT = "U?"  # replace unless a registered DICOM UID
    CLEAN = "C"
    SHIFT = "shift"
    SUBJECT = "subject"
    RECURSE = "K(SQ)"  # keep the sequence, apply the profile to its items
    SCRUB = "K(text)"  # keep free text, without the patient's identifiers in it


# Bumped only when a change to this module changes its output: a re-sent instance must
# encode to the same bytes across HarmoNet upgrades, or the store would quarantine it.
PROFILE_VERSION: Final = "2"  # 2: identifiers scrubbed from kept free text


# PS3.16 CID 7050 De-identification Method.
DEIDENTIFICATION_METHOD_CODES: Final[tuple[tuple[str, str], ...]] = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113109", "Retain Device Identity Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113105", "Clean Descriptors Option"),
    ("113111", "Retain Safe Private Option"),
)
# De-identification Method is LO (64 chars a value), so one value per profile/option.
DEIDENTIFICATION_METHOD: Final[tuple[str, ...]] = (
    "DICOM PS3.15 Basic Application Level Confidentiality Profile",
    "Retain Device Identity",
    "Retain Patient Characteristics",
    "Retain Longitudinal Temporal Information Modified Dates",
    "Clean Descriptors",
    "Retain Safe Private",
    f"HarmoNet pseudonymisation profile {PROFILE_VERSION}",
)

# Table E.1-1, column "Rtn. Dev. Id. Opt.": K.
RETAIN_DEVICE_IDENTITY: Final[Mapping[int, str]] = {
    0x00181007: "Cassette ID",
    0x0018700A: "Detector ID",
    0x00500020: "Device Description",
    0x3010002D: "Device Label",
    0x00181000: "Device Serial Number",
    0x00181002: "Device UID",
    0x00181008: "Gantry ID",
    0x00181005: "Generator ID",
    0x0016004F: "Lens Make",
    0x00160050: "Lens Model",
    0x00160051: "Lens Serial Number",
    0x0016004E: "Lens Specification",
    0x0018100B: "Manufacturer's Device Class UID",
    0x30100043: "Manufacturer's Device Identifier",
    0x00400241: "Performed Station AE Title",
    0x00404030: "Performed Station Geographic Location Code Sequence",
    0x00400242: "Performed Station Name",
    0x00404028: "Performed Station Name Code Sequence",
    0x00181004: "Plate ID",
    0x00400011: "Scheduled Procedure Step Location",
    0x00400001: "Scheduled Station AE Title",
    0x00404027: "Scheduled Station Geographic Location Code Sequence",
    0x00400010: "Scheduled Station Name",
    0x00404025: "Scheduled Station Name Code Sequence",
    0x00321020: "Scheduled Study Location",
    0x00321021: "Scheduled Study Location AE Title",
    0x300A0216: "Source Manufacturer",
    0x30080105: "Source Serial Number",
    0x00081010: "Station Name",
    0x00185011: "Transducer Identification Sequence",
    0x300A00B2: "Treatment Machine Name",
    0x0018100A: "UDI Sequence",
    0x00181009: "Unique Device Identifier",
    0x00189371: "X-Ray Detector ID",
    0x00189373: "X-Ray Detector Label",
    0x00189367: "X-Ray Source ID",
    # K here, C under Modified Dates: resolved in _DECISIONS (see the module docstring).
    0x00181200: "Date of Last Calibration",
    0x00181201: "Time of Last Calibration",
    0x00181202: "DateTime of Last Calibration",
}

# Table E.1-1, column "Rtn. Pat. Chars. Opt.": K. Its C entries (Allergies, Patient
# State, Pre-Medication, Special Needs) are free text we do not keep: removed (X).
RETAIN_PATIENT_CHARACTERISTICS: Final[Mapping[int, str]] = {
    0x00101010: "Patient's Age",
    0x00100040: "Patient's Sex",
    0x00102203: "Patient's Sex Neutered",
    0x00101020: "Patient's Size",
    0x00101030: "Patient's Weight",
    0x00102160: "Ethnic Group",
    0x00102161: "Ethnic Group Code Sequence",  # successors of Ethnic Group, same treatment
    0x00102162: "Ethnic Groups",
    0x001021C0: "Pregnancy Status",
    0x001021A0: "Smoking Status",
}

# Table E.1-1, column "Clean Desc. Opt.": C - the descriptors we keep, cleaned. The
# option's other C entries are removed as the Basic Profile says.
CLEANED_DESCRIPTORS: Final[Mapping[int, str]] = {
    0x0008103E: "Series Description",
    0x00181030: "Protocol Name",
    0x00081030: "Study Description",
    0x00400254: "Performed Procedure Step Description",
    0x00180010: "Contrast/Bolus Agent",
    0x00181400: "Acquisition Device Processing Description",
    0x00082111: "Derivation Description",
}

# Ours, taking precedence over profile and options.
_DECISIONS: Final[Mapping[int, Action]] = {
    0x00100010: Action.SUBJECT,  # Patient's Name
    0x00100020: Action.SUBJECT,  # Patient ID
    0x00120040: Action.SUBJECT,  # Clinical Trial Subject ID
    0x00100030: Action.EMPTY,  # Patient's Birth Date: never shifted-and-kept
    0x00100032: Action.REMOVE,  # Patient's Birth Time: not kept with the other TMs
    0x00181200: Action.SHIFT,  # Date of Last Calibration: Modified Dates over Device Identity
    0x00181202: Action.SHIFT,  # DateTime of Last Calibration: same
    0x00181201: Action.KEEP,  # Time of Last Calibration
    0x00180024: Action.CLEAN,  # Sequence Name: not in E.1-1; series classification reads it
}

# Group 0010 attributes outside the tables that carry no identity; the rest is removed.
_PATIENT_MODULE_KEPT: Final[frozenset[int]] = frozenset({
    0x00100022,  # Type of Patient ID
    0x00100200,  # Quality Control Subject
    0x00101021,  # Patient's Size Code Sequence
    0x00101022,  # Patient's Body Mass Index
    0x00101023,  # Measured AP Dimension
    0x00101024,  # Measured Lateral Dimension
    0x00102201,  # Patient Species Description
    0x00102202,  # Patient Species Code Sequence
    0x00102210,  # Anatomical Orientation Type
    0x00102292,  # Patient Breed Description
    0x00102293,  # Patient Breed Code Sequence
    0x00109431,  # Examined Body Thickness
})

_UID_KEYWORDS_KEPT: Final[frozenset[str]] = frozenset({
    "CodingSchemeUID", "ContextUID", "MappingResourceUID", "ContextGroupExtensionCreatorUID",
    "PrivateInformationCreatorUID",
})

_FILE_META_REMOVED: Final[frozenset[int]] = frozenset({
    0x00020016,  # Source Application Entity Title
    0x00020017,  # Sending Application Entity Title
    0x00020018,  # Receiving Application Entity Title
    0x00020026,  # Source Presentation Address
    0x00020027,  # Sending Presentation Address
    0x00020028,  # Receiving Presentation Address
    0x00020100,  # Private Information Creator UID
    0x00020102,  # Private Information
})


def _basic_profile() -> tuple[dict[int, str], list[tuple[int, int, int, int]]]:
    codes: dict[int, str] = {}
    masked: list[tuple[int, int, int, int]] = []
    for code, name in (("D", "D_TAGS"), ("Z", "Z_TAGS"), ("X", "X_TAGS"), ("U", "U_TAGS"),
                       ("Z/D", "Z_D_TAGS"), ("X/Z", "X_Z_TAGS"), ("X/D", "X_D_TAGS"),
                       ("X/Z/D", "X_Z_D_TAGS"), ("X/Z/U*", "X_Z_U_STAR_TAGS")):
        for entry in getattr(table_e1_1, name):
            if len(entry) == 2:
                codes[(entry[0] << 16) | entry[1]] = code
            elif code == "X":  # (group, element, group mask, element mask): curves, overlays
                group, element, group_mask, element_mask = entry
                masked.append((group, element, group_mask, element_mask))
            else:
                raise RuntimeError(f"unexpected masked {code} entry in Table E.1-1")
    return codes, masked


_BASIC, _BASIC_MASKED = _basic_profile()
# The rest of each overlay group goes with its Overlay Data.
_BASIC_MASKED.append((0x6000, 0x0000, 0xFF00, 0x0000))
_OPTION_CODES: Final[Mapping[int, str]] = {
    **dict.fromkeys(RETAIN_DEVICE_IDENTITY, "K"),
    **dict.fromkeys(RETAIN_PATIENT_CHARACTERISTICS, "K"),
    **dict.fromkeys(CLEANED_DESCRIPTORS, "C"),
}


def _resolve(code: str, vr: str | None) -> Action:
    sequence = vr == "SQ"
    if code in ("X/Z", "Z/D", "X/Z/D"):
        return Action.EMPTY
    if code in ("D", "X/D"):
        return Action.REMOVE if sequence else Action.DUMMY
    if code == "K":
        return Action.RECURSE if sequence else Action.KEEP
    if code == "C":
        return Action.REMOVE if sequence else Action.CLEAN
    return {"X": Action.REMOVE, "Z": Action.EMPTY, "U": Action.UID,
            "X/Z/U*": Action.RECURSE}[code]


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@functools.cache
def action_for(tag: int) -> Action:
    """What happens to a standard (even group) attribute; private ones use the allow-list."""
    if tag & 0xFFFF == 0:
        return Action.REMOVE  # group length
    if tag in _DECISIONS:
        return _DECISIONS[tag]
    vr = _dictionary_vr(tag)
    if tag in _OPTION_CODES:
        return _resolve(_OPTION_CODES[tag], vr)
    group, element = tag >> 16, tag & 0xFFFF
    if any(group & gm == g and element & em == e for g, e, gm, em in _BASIC_MASKED):
        return Action.REMOVE
    if vr in ("DA", "DT"):
        return Action.SHIFT
    if vr == "TM":
        return Action.KEEP
    if tag in _BASIC:
        return _scrubbed(_resolve(_BASIC[tag], vr), vr)
    if group == 0x0010 and tag not in _PATIENT_MODULE_KEPT:
        return Action.REMOVE
    if vr is None:
        return Action.REMOVE
    if vr == "PN":  # a person the table does not list yet (e.g. Evaluator Name)
        return Action.EMPTY
    if vr == "UI":
        keyword = keyword_for_tag(tag)
        kept = "Class" in keyword or "TransferSyntax" in keyword or keyword in _UID_KEYWORDS_KEPT
        return Action.KEEP if kept else Action.UID_OUTSIDE_DICOM_ROOT
    return Action.RECURSE if vr == "SQ" else _scrubbed(Action.KEEP, vr)


_FREE_TEXT_VRS: Final = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})


def _scrubbed(action: Action, vr: str | None) -> Action:
    return Action.SCRUB if action is Action.KEEP and vr in _FREE_TEXT_VRS else action


@dataclass(frozen=True)
class PrivateBlock:
    """A vendor block kept under Retain Safe Private: creator, group and kept offsets."""

    creator: str
    group: int
    offsets: frozenset[int]
    purpose: str


def _private_block(creator: str, group: int, purpose: str, *, offsets: Iterable[int] = range(256),
                   drop: Iterable[int] = (), keep_free_text: bool = False) -> PrivateBlock:
    def free_text(offset: int) -> bool:
        try:
            vr = private_dictionary_VR((group << 16) | 0x1000 | offset, creator)
        except KeyError:
            return False
        return vr in ("LT", "ST", "UT")

    kept = {o for o in offsets if keep_free_text or not free_text(o)} - set(drop)
    return PrivateBlock(creator, group, frozenset(kept), purpose)


SAFE_PRIVATE_BLOCKS: Final[tuple[PrivateBlock, ...]] = (
    _private_block("SIEMENS CSA HEADER", 0x0029, "CSA image and series headers: mosaic, "
                   "slice timing, diffusion, Phoenix protocol", offsets=range(0x08, 0x21)),
    _private_block("SIEMENS MR HEADER", 0x0019, "b-value, diffusion direction, "
                   "bandwidth per pixel phase encode, mosaic slice times"),
    _private_block("SIEMENS MR HEADER", 0x0051, "coil, PAT mode, acquisition matrix text"),
    _private_block("GEMS_ACQU_01", 0x0019, "GE acquisition parameters"),
    # 61-63: Scanner Study Entity UID, Scanner Study ID, Raw Data ID.
    _private_block("GEMS_PARM_01", 0x0043, "GE b-values, slice order, ASSET, multiband",
                   drop=(0x61, 0x62, 0x63)),
    _private_block("Philips Imaging DD 001", 0x2001, "Philips image parameters (kept whole)",
                   keep_free_text=True),
    _private_block("Philips MR Imaging DD 001", 0x2005, "Philips MR parameters, scale "
                   "slope/intercept (kept whole)", keep_free_text=True),
)
_SAFE_BLOCKS: Final[Mapping[tuple[int, str], PrivateBlock]] = {
    (block.group, block.creator): block for block in SAFE_PRIVATE_BLOCKS
}


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed, deterministic pseudonyms and the de-identification of one instance."""

    key: bytes = field(repr=False)
    _mac: hmac.HMAC = field(init=False, repr=False, compare=False)
    # Study, series and frame of reference UIDs repeat on every instance of a series.
    _uids: dict[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("pseudonym key must be at least 16 bytes")
        object.__setattr__(self, "_mac", hmac.new(self.key, digestmod=hashlib.sha256))

    def _digest(self, message: str) -> bytes:
        mac = self._mac.copy()
        mac.update(message.encode())
        digest: bytes = mac.digest()
        return digest

    def subject_id(self, patient_id: str) -> str:
        """``sub-`` and 16 base32 characters (80 bits); a valid LO and PN."""
        label = base64.b32encode(self._digest("subject:" + patient_id)[:10]).decode()
        return "sub-" + label.lower()

    def uid(self, original: str) -> str:
        """``2.25.`` and the integer of 128 bits of the keyed hash (at most 44 characters)."""
        original = original.strip(" \x00")
        cached = self._uids.get(original)
        if cached is None:
            digest = self._digest("uid:" + original)
            cached = f"2.25.{int.from_bytes(digest[:16], 'big')}"
            if len(self._uids) >= 4096:
                self._uids.clear()
            self._uids[original] = cached
        return cached

    def date_offset_days(self, patient_id: str) -> int:
        """Days every date of the subject moves by, in [-3650, -365]."""
        number = int.from_bytes(self._digest("date:" + patient_id)[:8], "big")
        return -365 - number % (3650 - 365 + 1)

    def apply(self, ds: Dataset) -> None:
        """De-identify ``ds`` in place (file meta and nested sequences included).

        Raises PseudonymisationError when the instance has no PatientID and no
        StudyInstanceUID to derive the subject from.
        """
        basis = _subject_basis(ds)
        run = _Run(self, subject=self.subject_id(basis), offset_days=self.date_offset_days(basis),
                   identifiers=_identifiers(ds))
        _add_patient_age(ds)
        _walk(ds, run)
        for tag, vr in ((0x00100010, "PN"), (0x00100020, "LO")):  # Type 2: present, and ours
            if tag not in ds:
                _put(ds, tag, vr, [run.subject])
        _mark_deidentified(ds)
        _rewrite_file_meta(ds, run)


@dataclass(frozen=True)
class _Run:
    pseudonymiser: Pseudonymiser
    subject: str
    offset_days: int
    identifiers: tuple[str, ...]


# --- reading and writing elements ----------------------------------------------------
# Runs per instance on the C-STORE thread: values we only replace are read from the raw
# bytes when they are plain ASCII, and elements we build carry values we produced, so
# pydicom's conversion and validation are skipped for both.

_CONVERTED_AS_STR: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST",
                                      "TM", "UC", "UR", "UT"})


def _read(ds: Dataset, tag: int) -> tuple[str, list[str]]:
    """The VR and the non-empty string values of an element, unconverted when possible."""
    elem = _get_item(ds, tag)
    if isinstance(elem, RawDataElement):
        vr = elem.VR
        raw = elem.value
        # ASCII without ISO 2022 escapes reads the same in every DICOM character set.
        if isinstance(raw, bytes) and raw.isascii() and b"\x1b" not in raw:
            texts = (t.strip(" \x00") for t in raw.decode("ascii").split("\\"))
            return _plain_vr(vr, tag), [t for t in texts if t]
    elif elem is None:
        return _plain_vr(None, tag), []
    converted = ds[tag]
    value = converted.value
    if value is None or isinstance(value, bytes | Sequence):
        return _plain_vr(converted.VR, tag), []
    values = value if isinstance(value, MultiValue | list) else [value]
    return _plain_vr(converted.VR, tag), [t for v in values if (t := str(v).strip(" \x00"))]


def _strings(ds: Dataset, tag: int) -> list[str]:
    return _read(ds, tag)[1]


def _plain_vr(vr: str | None, tag: int) -> str:
    if vr is None or " or " in vr:  # implicit VR, or an ambiguous dictionary VR
        vr = _dictionary_vr(tag) or "UN"
    return vr.split(" or ")[0]


def _get_item(ds: Dataset, tag: int) -> DataElement | RawDataElement | None:
    # Typed as DataElement by pydicom, but returns raw elements unconverted.
    return cast(DataElement | RawDataElement | None, ds.get_item(tag))


def _raw_vr(ds: Dataset, tag: int) -> str | None:
    elem = _get_item(ds, tag)
    return elem.VR if isinstance(elem, DataElement | RawDataElement) else None


def _vr(ds: Dataset, tag: int) -> str:
    return _plain_vr(_raw_vr(ds, tag), tag)


def _element(tag: int, vr: str, values: list[Any]) -> DataElement:
    """An element holding values we produced: valid by construction, so not re-validated."""
    tag = BaseTag(tag)
    if len(values) > 1:
        return DataElement(tag, vr, values, validation_mode=config.IGNORE)
    value: Any = values[0] if values else Sequence() if vr == "SQ" else empty_value_for_VR(vr)
    if vr == "UI":
        value = UID(value, validation_mode=config.IGNORE)
    elif vr == "PN":
        value = PersonName(value)
    elif vr not in _CONVERTED_AS_STR and vr != "SQ":
        return DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return DataElement(tag, vr, value, already_converted=True, validation_mode=config.IGNORE)


def _put(ds: Dataset, tag: int, vr: str, values: list[Any]) -> None:
    elem = _element(tag, vr, values)
    ds[elem.tag] = elem


def _subject_basis(ds: Dataset) -> str:
    patient_ids = _strings(ds, 0x00100020)
    if patient_ids:
        return patient_ids[0]
    study_uids = _strings(ds, 0x0020000D)
    if not study_uids:
        raise PseudonymisationError("instance has neither PatientID nor StudyInstanceUID")
    return "\\study:" + study_uids[0]


def _identifiers(ds: Dataset) -> tuple[str, ...]:
    found: set[str] = set()
    for tag in (0x00100010, 0x00101001, 0x00101005):  # names: patient's, other, birth
        for name in _strings(ds, tag):
            parts = [p for p in re.split(r"[\^=\s,]+", name) if len(p) >= 2]
            found.update(parts)
            if len(parts) >= 2:
                found.update({parts[0] + parts[1], parts[1] + parts[0]})
    for tag in (0x00100020, 0x00101000, 0x00080050):  # Patient ID, Other IDs, Accession
        found.update(_strings(ds, tag))
    return tuple(sorted(found))


# --- the walk -------------------------------------------------------------------------


def _walk(ds: Dataset, run: _Run) -> None:
    private: list[int] = []
    actions = _ACTIONS
    for tag in list(ds.keys()):
        if (tag >> 16) & 1:
            private.append(tag)
            continue
        key = int(tag)  # BaseTag.__eq__ is Python code: slow as a dict key
        action = actions.get(key)
        if action is None:
            action = actions[key] = action_for(key)
        if action is not Action.KEEP:
            _APPLY[action](ds, tag, run)
    if private:
        _filter_private(ds, private, run)


_ACTIONS: Final[dict[int, Action]] = {}


def _remove(ds: Dataset, tag: int, run: _Run) -> None:
    del ds[tag]


def _empty(ds: Dataset, tag: int, run: _Run) -> None:
    _put(ds, tag, _vr(ds, tag), [])


_DUMMY_NUMBERS: Final = {"DS": "0", "IS": "0", "FD": 0.0, "FL": 0.0, "SL": 0, "SS": 0,
                         "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": 0}


def _dummy(ds: Dataset, tag: int, run: _Run) -> None:
    vr = _vr(ds, tag)
    if vr == "SQ":
        del ds[tag]
    elif vr == "UI":
        _uid(ds, tag, run)
    elif vr in ("DA", "DT"):
        _shift(ds, tag, run)
    elif vr in _DUMMY_NUMBERS:
        _put(ds, tag, vr, [_DUMMY_NUMBERS[vr]])
    elif vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        _put(ds, tag, vr, [b"\x00\x00"])
    else:
        _put(ds, tag, vr, ["000Y" if vr == "AS" else "000000" if vr == "TM" else "ANONYMIZED"])


def _replace_uids(ds: Dataset, tag: int, run: _Run, *, dicom_root_kept: bool) -> None:
    _, values = _read(ds, tag)
    if values:
        uid = run.pseudonymiser.uid
        new = [v if dicom_root_kept and v.startswith("1.2.840.10008.") else uid(v) for v in values]
        _put(ds, tag, "UI", new)


def _uid(ds: Dataset, tag: int, run: _Run) -> None:
    _replace_uids(ds, tag, run, dicom_root_kept=False)


def _uid_outside_dicom_root(ds: Dataset, tag: int, run: _Run) -> None:
    _replace_uids(ds, tag, run, dicom_root_kept=True)


def _subject(ds: Dataset, tag: int, run: _Run) -> None:
    _put(ds, tag, _vr(ds, tag), [run.subject])


def _recurse(ds: Dataset, tag: int, run: _Run) -> None:
    value = ds[tag].value
    if isinstance(value, Sequence):
        for item in value:
            _walk(item, run)


def _clean(ds: Dataset, tag: int, run: _Run) -> None:
    vr, values = _read(ds, tag)
    if vr == "SQ":
        del ds[tag]
    elif values:
        cleaner = _cleaner(run.identifiers)
        _put(ds, tag, vr, [cleaner(v) for v in values])


def _scrub(ds: Dataset, tag: int, run: _Run) -> None:
    vr, values = _read(ds, tag)
    if values and run.identifiers:
        scrubbed = [_scrubber(run.identifiers)(v) for v in values]
        if scrubbed != values:  # rewrite only what changed: the bytes of the rest stay
            _put(ds, tag, vr, scrubbed)


def _shift(ds: Dataset, tag: int, run: _Run) -> None:
    vr, values = _read(ds, tag)
    shift = {"DA": _shift_da, "DT": _shift_dt}.get(vr)
    if shift is None:  # a date attribute encoded with another VR: can not be trusted
        del ds[tag]
    elif values:
        _put(ds, tag, vr, [shift(v, run.offset_days) for v in values])


_APPLY: Final[Mapping[Action, Callable[[Dataset, int, _Run], None]]] = {
    Action.REMOVE: _remove,
    Action.EMPTY: _empty,
    Action.DUMMY: _dummy,
    Action.UID: _uid,
    Action.UID_OUTSIDE_DICOM_ROOT: _uid_outside_dicom_root,
    Action.SUBJECT: _subject,
    Action.RECURSE: _recurse,
    Action.CLEAN: _clean,
    Action.SCRUB: _scrub,
    Action.SHIFT: _shift,
}


# --- private attributes ---------------------------------------------------------------


def _filter_private(ds: Dataset, tags: list[int], run: _Run) -> None:
    blocks: dict[tuple[int, int], PrivateBlock | None] = {}
    for tag in tags:
        if 0x10 <= tag & 0xFFFF <= 0xFF:
            group = tag >> 16
            creator = next(iter(_strings(ds, tag)), "")
            blocks[(group, tag & 0xFF)] = _SAFE_BLOCKS.get((group, creator))
    for tag in tags:
        group, element = tag >> 16, tag & 0xFFFF
        if element <= 0xFF:
            if blocks.get((group, element)) is None:
                del ds[tag]  # creator of a removed block, group length, reserved
            continue
        block = blocks.get((group, element >> 8))
        if block is None or element & 0xFF not in block.offsets:
            del ds[tag]
        elif _private_vr(ds, tag, block) == "UI":
            _uid(ds, tag, run)


def _private_vr(ds: Dataset, tag: int, block: PrivateBlock) -> str | None:
    vr = _raw_vr(ds, tag)
    if vr is None or vr == "UN":
        try:
            vr = private_dictionary_VR(tag, block.creator)
        except KeyError:
            return vr
    return vr


# --- dates, ages, descriptors ---------------------------------------------------------


def _parse_da(text: str) -> dt.date | None:
    digits = text.replace(".", "") if len(text) == 10 else text  # ACR-NEMA YYYY.MM.DD
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _format_da(date: dt.date) -> str:
    return f"{date.year:04d}{date.month:02d}{date.day:02d}"


def _shift_da(text: str, days: int) -> str:
    date = _parse_da(text)
    if date is None:
        return ""
    try:
        return _format_da(date + dt.timedelta(days=days))
    except OverflowError:
        return ""


def _shift_dt(text: str, days: int) -> str:
    """Shift the date part of YYYY[MM[DD[HH...]]][&ZZXX] at its own precision."""
    digits = len(text) - len(text.lstrip("0123456789"))
    precision = min(digits, 8)
    if precision not in (4, 6, 8):
        return ""
    shifted = _shift_da(text[:precision] + "0101"[precision - 4:], days)
    return shifted[:precision] + text[precision:] if shifted else ""


def _age(birth: dt.date, on: dt.date) -> str | None:
    """DICOM AS between two dates: years, else months, weeks, days."""
    if on < birth:
        return None
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    if months >= 12:
        return f"{min(months // 12, 999):03d}Y"
    if months >= 1:
        return f"{months:03d}M"
    days = (on - birth).days
    return f"{days // 7:03d}W" if days >= 7 else f"{days:03d}D"


def _add_patient_age(ds: Dataset) -> None:
    if _strings(ds, 0x00101010):
        return
    births = _strings(ds, 0x00100030)
    birth = _parse_da(births[0]) if births else None
    if birth is None:
        return
    for tag in (0x00080020, 0x00080021, 0x00080022, 0x00080023):  # Study, Series, Acq., Content
        dates = _strings(ds, tag)
        on = _parse_da(dates[0]) if dates else None
        if on is not None:
            age = _age(birth, on)
            if age is not None:
                _put(ds, 0x00101010, "AS", [age])
            return


_DATE_LIKE: Final = re.compile(
    r"(?<!\d)(?:\d{8}|\d{6}|\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})(?!\d)"
)
_SEPARATORS: Final = " ^_-.,;:/"


def _is_date(token: str) -> bool:
    """Whether a digit token reads as a calendar date in any usual order."""
    parts = re.split(r"[-./]", token)
    if len(parts) == 3:
        first, middle, last = parts
        if len(first) == 4:  # Y-M-D
            return _valid(first, middle, last)
        # D-M-Y, M-D-Y, YY-MM-DD
        return _valid(last, middle, first) or _valid(last, first, middle) or _valid(*parts)
    t = token
    if len(t) == 8:  # YYYYMMDD, DDMMYYYY, MMDDYYYY
        return (_valid(t[:4], t[4:6], t[6:]) or _valid(t[4:], t[2:4], t[:2])
                or _valid(t[4:], t[:2], t[2:4]))
    # YYMMDD, DDMMYY, MMDDYY
    return (_valid(t[:2], t[2:4], t[4:]) or _valid(t[4:], t[2:4], t[:2])
            or _valid(t[4:], t[:2], t[2:4]))


def _valid(year: str, month: str, day: str) -> bool:
    y = int(year)
    y = y + 1900 if len(year) == 2 else y
    try:
        dt.date(y, int(month), int(day))
    except ValueError:
        return False
    return 1900 <= y <= 2100


def _identifier_pattern(identifiers: tuple[str, ...]) -> re.Pattern[str] | None:
    names = sorted((re.escape(i) for i in identifiers if i), key=len, reverse=True)
    return (re.compile(r"[ ^_\-.,;:/]*(?<![A-Za-z0-9])(?:" + "|".join(names)
                       + r")(?![A-Za-z0-9])", re.IGNORECASE) if names else None)


@functools.lru_cache(maxsize=256)
def _scrubber(identifiers: tuple[str, ...]) -> Callable[[str], str]:
    pattern = _identifier_pattern(identifiers)

    def scrub(text: str) -> str:
        if pattern is None or not pattern.search(text):
            return text
        return re.sub(r"\s{2,}", " ", pattern.sub("", text)).strip(_SEPARATORS)

    return scrub


@functools.lru_cache(maxsize=256)
def _cleaner(identifiers: tuple[str, ...]) -> Callable[[str], str]:
    pattern = _identifier_pattern(identifiers)

    def clean(text: str) -> str:
        if pattern is not None:
            text = pattern.sub("", text)
        text = _DATE_LIKE.sub(lambda m: "" if _is_date(m.group()) else m.group(), text)
        return re.sub(r"\s{2,}", " ", text).strip(_SEPARATORS)

    return clean


# --- what we add ------------------------------------------------------------------------


def _method_codes() -> Sequence:
    items = []
    for code, meaning in DEIDENTIFICATION_METHOD_CODES:
        elements = (_element(0x00080100, "SH", [code]), _element(0x00080102, "SH", ["DCM"]),
                    _element(0x00080104, "LO", [meaning]))
        items.append(Dataset({elem.tag: elem for elem in elements}))
    return Sequence(items)


@functools.cache
def _method_codes_value(is_implicit_vr: bool) -> bytes:
    """The De-identification Method Code Sequence's value as pydicom writes it (little
    endian): a constant, so encoded once rather than built and written per instance."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, is_implicit_vr
    write_data_element(buffer, _element(0x00120064, "SQ", [_method_codes()]))
    return buffer.getvalue()[8 if is_implicit_vr else 12:]  # after tag, (VR), length


def _method_codes_element(ds: Dataset) -> DataElement | RawDataElement:
    # As a raw element in the data set's own encoding it is written verbatim (by
    # receiver.encode and by dcmwrite alike) and parsed like a received one when read.
    implicit, little_endian = ds.original_encoding
    if implicit is None or not little_endian:
        return _element(0x00120064, "SQ", [_method_codes()])
    value = _method_codes_value(implicit)
    return RawDataElement(_METHOD_CODES_TAG, "SQ", len(value), value, 0, implicit, True)


_METHOD_CODES_TAG: Final = BaseTag(0x00120064)


def _mark_deidentified(ds: Dataset) -> None:
    _put(ds, 0x00120062, "CS", ["YES"])
    _put(ds, 0x00120063, "LO", list(DEIDENTIFICATION_METHOD))
    ds[_METHOD_CODES_TAG] = _method_codes_element(ds)
    _put(ds, 0x00280303, "CS", ["MODIFIED"])


def _rewrite_file_meta(ds: Dataset, run: _Run) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        tags = list(meta.keys())  # iterating a Dataset yields elements, not tags
        for tag in tags:
            if int(tag) in _FILE_META_REMOVED:
                del meta[tag]
        sop_uids = _strings(ds, 0x00080018)  # already replaced
        if sop_uids:
            _put(meta, 0x00020003, "UI", sop_uids[:1])
        elif 0x00020003 in meta:
            _uid(meta, 0x00020003, run)
    if getattr(ds, "preamble", None) is not None:
        ds.preamble = None  # written as 128 zero bytes
