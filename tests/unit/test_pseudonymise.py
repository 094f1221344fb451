"""receiver.pseudonymise: PS3.15 Basic Profile + options, keyed pseudonyms, checked on the bytes."""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
from collections.abc import Iterator

import pytest
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table_e1_1
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pydicom.valuerep import validate_value

from receiver.pseudonymise import (
    CLEANED_DESCRIPTORS,
    RETAIN_DEVICE_IDENTITY,
    RETAIN_PATIENT_CHARACTERISTICS,
    Action,
    PseudonymisationError,
    Pseudonymiser,
    action_for,
)
from services.synthetic import StudySpec, iter_instances, small_study

KEY = b"unit-test-key-0123456789abcdef"
OTHER_KEY = b"another-key-0123456789abcdefgh"
PATIENT_ID = "PID-0001"
REFERENCED_SOP = "1.2.826.0.1.3680043.8.498.777001"
REFERENCED_STUDY = "1.2.826.0.1.3680043.8.498.777002"
SOURCE_SOP = "1.2.826.0.1.3680043.8.498.777003"
GE_STUDY_UID = "1.2.840.113619.2.5.777004"
GE_PARADIGM_UID = "1.2.840.113619.2.5.777005"


def _first(spec: StudySpec | None = None, *, series: int = 2) -> Dataset:
    return next(ds for ds in iter_instances(spec or small_study()) if ds.SeriesNumber == series)


def _identifying() -> Dataset:
    """A synthetic EPI slice with more identifying attributes than the scanner writes."""
    ds = _first()
    ds.file_meta.SourceApplicationEntityTitle = "MILANPRISMA"
    ds.OtherPatientNames = "SMITH^JANE"
    ds.IssuerOfPatientID = "NIGUARDA-HIS"
    ds.PatientBirthTime = "061500"
    ds.PatientAddress = "Via Garibaldi 12, Milano"
    ds.PatientTelephoneNumbers = "+39 02 5550199"
    ds.MedicalAlerts = "pacemaker removed 2019"
    ds.AdditionalPatientHistory = "history of DOE family"
    ds.InstitutionalDepartmentName = "Neuroradiologia"
    ds.PhysiciansOfRecord = "GREY^MEREDITH"
    ds.NameOfPhysiciansReadingStudy = "WILSON^JAMES"
    ds.ImageComments = "JANE DOE 17.03.1954"
    ds.InstanceCreationDate = "20261103"
    ds.InstanceCreationTime = "093512"
    ds.AcquisitionDateTime = "20261103093200.000000+0100"
    ds.add_new(0x00101001, "PN", "SMITH^JANE")
    ds.add_new(0x00100033, "LO", "1373/12/26")  # Patient's Birth Date in Alternative Calendar
    ds.PatientSpeciesDescription = "Homo sapiens"
    ds.EthnicGroup = "EUROPEAN"
    ref = Dataset()
    ref.ReferencedSOPClassUID = MRImageStorage
    ref.ReferencedSOPInstanceUID = REFERENCED_SOP
    ds.ReferencedImageSequence = Sequence([ref])
    source = Dataset()
    source.ReferencedSOPClassUID = MRImageStorage
    source.ReferencedSOPInstanceUID = SOURCE_SOP
    ds.SourceImageSequence = Sequence([source])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = REFERENCED_STUDY
    ds.ReferencedStudySequence = Sequence([study_ref])
    request = Dataset()
    request.RequestedProcedureID = "RP-778899"
    request.ScheduledProcedureStepID = "SPS-4455"
    request.ScheduledProcedureStepDescription = "MRI brain DOE"
    ds.RequestAttributesSequence = Sequence([request])
    contributor = Dataset()
    contributor.Manufacturer = "ACME Recon"
    contributor.InstitutionName = "Ospedale Niguarda"
    contributor.ContributionDateTime = "20261104120000"
    ds.ContributingEquipmentSequence = Sequence([contributor])
    _add_private_blocks(ds)
    _add_overlay_and_curve(ds)
    return ds


def _add_private_blocks(ds: Dataset) -> None:
    mr = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    mr.add_new(0x0C, "IS", "1000")  # b-value
    notes = ds.private_block(0x0019, "ACME IMAGING", create=True)
    notes.add_new(0x01, "LO", "operator TECH^ANNA")
    ge = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    ge.add_new(0x39, "IS", ["1000", "8", "0", "0"])  # slop ints: b-value
    ge.add_new(0x61, "UI", GE_STUDY_UID)  # Scanner Study Entity UID
    ge.add_new(0x62, "SH", "E12345")  # Scanner Study ID
    ge.add_new(0x72, "UI", GE_PARADIGM_UID)  # Paradigm UID
    ge.add_new(0x85, "UT", "debug: patient DOE^JANE")  # Debug Data (text format)


def _add_overlay_and_curve(ds: Dataset) -> None:
    ds.add_new(0x60000010, "US", 64)  # Overlay Rows
    ds.add_new(0x60000011, "US", 64)  # Overlay Columns
    ds.add_new(0x60000040, "CS", "G")  # Overlay Type
    ds.add_new(0x60000050, "SS", [1, 1])  # Overlay Origin
    ds.add_new(0x60000100, "US", 1)  # Overlay Bits Allocated
    ds.add_new(0x60000102, "US", 0)  # Overlay Bit Position
    ds.add_new(0x60003000, "OW", b"\x00" * 512)  # Overlay Data
    ds.add_new(0x60004000, "LT", "JANE DOE burned note")  # Overlay Comments
    ds.add_new(0x50003000, "OB", b"DOE curve")  # Curve Data (retired)


def _encode(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _decoded(ds: Dataset, transfer_syntax: str) -> Dataset:
    return dcmread(io.BytesIO(_encode(ds, transfer_syntax)))


def _pseudonymised(ds: Dataset, key: bytes = KEY) -> Dataset:
    Pseudonymiser(key).apply(ds)
    return ds


ORIGINALS: tuple[str, ...] = (
    "DOE^JANE", "DOE", "JANE", "JANEDOE", "SMITH", PATIENT_ID, "PID-0001-OLD", "ACC",
    "Ospedale Niguarda", "Niguarda", "Piazza Ospedale Maggiore", "Milano", "Garibaldi",
    "HOUSE^GREGORY", "HOUSE", "GREGORY", "QUINN", "MICHAELA", "TECH^ANNA", "ANNA", "GREY",
    "MEREDITH", "WILSON", "Neuroradiologia", "5550199", "pacemaker", "RP-778899", "SPS-4455",
    "ACME PATIENT NOTES", "ACME IMAGING", "notes on", "E12345", "MILANPRISMA",
    "1373/12/26", "061500",
    "20261103", "20261104", "20261020", "19540317", "17.03.1954",
    REFERENCED_SOP, REFERENCED_STUDY, SOURCE_SOP, GE_STUDY_UID, GE_PARADIGM_UID,
)


def _original_uids(ds: Dataset) -> list[str]:
    return [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID]


# --- nothing identifying leaves -----------------------------------------------------------


@pytest.mark.parametrize("transfer_syntax", [None, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=["in-memory", "explicit-raw", "implicit-raw"])
def test_no_original_identifier_is_left_in_the_bytes(transfer_syntax: str | None) -> None:
    ds = _identifying()
    originals = [*ORIGINALS, ds.AccessionNumber, *_original_uids(ds)]
    if transfer_syntax is not None:
        ds = _decoded(ds, transfer_syntax)
    data = _encode(_pseudonymised(ds)).lower()
    leaked = [text for text in originals if text.lower().encode() in data]
    assert leaked == []


def test_the_check_on_the_bytes_can_fail() -> None:
    data = _encode(_identifying()).lower()
    assert all(text.lower().encode() in data for text in ("DOE^JANE", PATIENT_ID, "20261103"))


def test_nothing_about_the_patient_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _pseudonymised(_identifying())
    assert not any(text in caplog.text for text in ("DOE", "JANE", PATIENT_ID, "20261103"))


def test_every_removed_basic_profile_attribute_is_gone() -> None:
    ds, present = _every_x_attribute()
    _pseudonymised(ds)
    after = _tags(ds)
    retained = set(RETAIN_DEVICE_IDENTITY) | set(RETAIN_PATIENT_CHARACTERISTICS) | set(
        CLEANED_DESCRIPTORS)
    dates_and_times = {t for t in present if _vr(t) in ("DA", "DT", "TM")} - {0x00100032}
    assert len(present) > 300
    assert (present & after) - retained - dates_and_times == set()
    assert all(ds[t].value != "20200102" for t in present & after if _vr(t) == "DA")
    # Other Patient IDs, Patient's Address, Institution Address, Performing Physician's Name,
    # Image Comments, Request Attributes Sequence, Patient's Birth Time
    assert {0x00101000, 0x00101040, 0x00080081, 0x00081050, 0x00204000, 0x00400275,
            0x00100032} <= present - after
    _encode(ds)


def _tags(ds: Dataset) -> set[int]:
    return {int(elem.tag) for elem in ds}


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


_SAMPLE_VALUES = {
    "AE": "IDENT", "AS": "030Y", "AT": 0x00100010, "CS": "IDENT", "DA": "20200102", "DS": "1",
    "DT": "20200102030405", "FD": 1.0, "FL": 1.0, "IS": "1", "LO": "IDENT", "LT": "IDENT",
    "OB": b"ID", "OD": b"\x00" * 8, "OF": b"\x00" * 4, "OL": b"\x00" * 4, "OV": b"\x00" * 8,
    "OW": b"ID", "PN": "IDENT^X", "SH": "IDENT", "SL": 1, "SS": 1, "ST": "IDENT", "SV": 1,
    "TM": "030405", "UC": "IDENT", "UI": "1.2.3.4", "UL": 1, "UN": b"ID",
    "UR": "http://ident.example", "US": 1, "UT": "IDENT", "UV": 1,
}


def _every_x_attribute() -> tuple[Dataset, set[int]]:
    """A dataset carrying every plain-tag X of the library's Table E.1-1, and those tags."""
    ds = _first()
    added: set[int] = set()
    for group, element in (entry for entry in table_e1_1.X_TAGS if len(entry) == 2):
        tag = (group << 16) | element
        if group in (0x0000, 0x0002):  # command and file meta groups: never in a dataset
            continue
        vr = _vr(tag)
        if vr == "SQ":
            item = Dataset()
            item.PersonName = "IDENT^X"
            ds.add(DataElement(tag, "SQ", Sequence([item])))
        else:
            ds.add(DataElement(tag, vr, _SAMPLE_VALUES[vr]))
        added.add(tag)
    return ds, added


# --- pseudonyms ---------------------------------------------------------------------------


def test_same_key_gives_the_same_bytes_on_every_push() -> None:
    first = _encode(_pseudonymised(_identifying(), KEY))
    again = _encode(_pseudonymised(_identifying(), bytes(KEY)))
    assert first == again


def test_another_key_gives_other_pseudonyms() -> None:
    ours, theirs = _pseudonymised(_first(), KEY), _pseudonymised(_first(), OTHER_KEY)
    assert ours.PatientID != theirs.PatientID
    assert ours.StudyInstanceUID != theirs.StudyInstanceUID
    assert ours.SOPInstanceUID != theirs.SOPInstanceUID


def test_one_subject_maps_to_one_id_across_studies() -> None:
    first, second = _first(small_study("visit-1")), _first(small_study("visit-2"))
    assert first.StudyInstanceUID != second.StudyInstanceUID
    _pseudonymised(first)
    _pseudonymised(second)
    assert first.PatientID == second.PatientID == Pseudonymiser(KEY).subject_id(PATIENT_ID)
    assert first.PatientName == first.PatientID
    assert first.StudyInstanceUID != second.StudyInstanceUID


def test_a_study_without_patient_id_still_maps_to_one_subject() -> None:
    instances = [ds for ds in iter_instances(small_study("no-id")) if ds.InstanceNumber <= 2]
    other = _first(small_study("no-id-either"))
    for ds in [*instances, other]:
        del ds.PatientID
        _pseudonymised(ds)
    assert instances[0].PatientID == instances[1].PatientID != other.PatientID
    assert re.fullmatch(r"sub-[a-z2-7]{16}", instances[0].PatientID)


def test_an_instance_without_patient_id_and_study_uid_is_refused() -> None:
    ds = _first()
    del ds.PatientID, ds.StudyInstanceUID
    with pytest.raises(PseudonymisationError):
        Pseudonymiser(KEY).apply(ds)


def test_every_uid_is_replaced_consistently() -> None:
    ds = _identifying()
    originals = _original_uids(ds)
    pseudonymiser = Pseudonymiser(KEY)
    pseudonymiser.apply(ds)
    assert _original_uids(ds) == [pseudonymiser.uid(uid) for uid in originals]
    assert ds.SOPClassUID == MRImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == MRImageStorage


def test_a_reference_points_at_the_referenced_instance_after_both_are_pseudonymised() -> None:
    referenced, referencing = list(iter_instances(small_study()))[:2]
    item = Dataset()
    item.ReferencedSOPClassUID = referenced.SOPClassUID
    item.ReferencedSOPInstanceUID = referenced.SOPInstanceUID
    referencing.ReferencedImageSequence = Sequence([item])
    _pseudonymised(referenced)
    _pseudonymised(referencing)
    reference = referencing.ReferencedImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == referenced.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == MRImageStorage


def test_nested_sequences_are_walked() -> None:
    ds = _pseudonymised(_identifying())
    uid = Pseudonymiser(KEY).uid
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == uid(REFERENCED_SOP)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == uid(SOURCE_SOP)
    assert "ReferencedStudySequence" in ds and len(ds.ReferencedStudySequence) == 0  # X/Z
    assert "RequestAttributesSequence" not in ds
    contributor = ds.ContributingEquipmentSequence[0]
    assert contributor.InstitutionName == ""
    assert contributor.ContributionDateTime == _shifted("20261104") + "120000"


def test_key_stays_out_of_repr_and_must_be_long_enough() -> None:
    assert "unit-test-key" not in repr(Pseudonymiser(KEY))
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymiser(b"short")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=64), min_size=2, max_size=20, unique=True))
def test_uid_is_a_valid_distinct_ui(originals: list[str]) -> None:
    pseudonymiser = Pseudonymiser(KEY)
    uids = [pseudonymiser.uid(value) for value in originals]
    for uid in uids:
        assert re.fullmatch(r"2\.25\.(0|[1-9]\d*)", uid)
        assert len(uid) <= 64
        validate_value("UI", uid, config.RAISE)
    distinct_inputs = {value.strip(" \x00") for value in originals}
    assert len(set(uids)) == len(distinct_inputs)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=64))
def test_subject_id_is_a_valid_lo_and_pn(patient_id: str) -> None:
    subject = Pseudonymiser(KEY).subject_id(patient_id)
    assert re.fullmatch(r"sub-[a-z2-7]{16}", subject)
    validate_value("LO", subject, config.RAISE)
    validate_value("PN", subject, config.RAISE)
    assert subject == Pseudonymiser(KEY).subject_id(patient_id)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=64))
def test_date_offset_is_stable_and_in_range(patient_id: str) -> None:
    offset = Pseudonymiser(KEY).date_offset_days(patient_id)
    assert -3650 <= offset <= -365
    assert offset == Pseudonymiser(bytes(KEY)).date_offset_days(patient_id)


# --- dates --------------------------------------------------------------------------------


def _shifted(date: str, patient_id: str = PATIENT_ID) -> str:
    days = Pseudonymiser(KEY).date_offset_days(patient_id)
    return (dt.datetime.strptime(date, "%Y%m%d").date() + dt.timedelta(days=days)).strftime(
        "%Y%m%d")


def test_every_date_moves_by_the_subjects_offset_and_times_stay() -> None:
    original = _identifying()
    ds = _pseudonymised(_identifying())
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                    "InstanceCreationDate", "DateOfLastCalibration"):
        assert ds[keyword].value == _shifted(original[keyword].value), keyword
    for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
                    "TimeOfLastCalibration", "InstanceCreationTime"):
        assert ds[keyword].value == original[keyword].value, keyword
    assert ds.AcquisitionDateTime == _shifted("20261103") + "093200.000000+0100"
    assert ds.PatientBirthDate == ""
    assert "PatientBirthTime" not in ds
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_scan_to_calibration_interval_is_kept() -> None:
    ds = _pseudonymised(_first())
    study = dt.datetime.strptime(ds.StudyDate, "%Y%m%d")
    calibration = dt.datetime.strptime(ds.DateOfLastCalibration, "%Y%m%d")
    assert (study - calibration).days == 14  # 2026-11-03 - 2026-10-20
    assert ds.DateOfLastCalibration != "20261020"


@pytest.mark.parametrize(("original", "as_date", "precision", "rest"), [
    ("2026", "20260101", 4, ""),
    ("202611", "20261101", 6, ""),
    ("20261103120000", "20261103", 8, "120000"),
    ("20261103120000.5+0100", "20261103", 8, "120000.5+0100"),
])
def test_datetime_values_shift_at_their_precision(original: str, as_date: str, precision: int,
                                                  rest: str) -> None:
    ds = _first()
    ds.AcquisitionDateTime = original
    _pseudonymised(ds)
    assert ds.AcquisitionDateTime == _shifted(as_date)[:precision] + rest


def test_an_unreadable_date_is_emptied() -> None:
    ds = _first()
    ds.add(DataElement(0x00080020, "DA", "20261340", validation_mode=config.IGNORE))
    _pseudonymised(ds)
    assert ds.StudyDate == ""


# --- what the options keep ----------------------------------------------------------------


def test_patient_characteristics_are_kept() -> None:
    original = _identifying()
    ds = _pseudonymised(_identifying())
    for keyword in ("PatientAge", "PatientSex", "PatientWeight", "PatientSize", "EthnicGroup",
                    "PatientSpeciesDescription"):
        assert ds[keyword].value == original[keyword].value, keyword
    assert "PatientBirthDateInAlternativeCalendar" not in ds


@pytest.mark.parametrize(("birth", "study", "age"), [
    ("19540317", "20261103", "072Y"), ("19540317", "20260316", "071Y"),
    ("20260501", "20261103", "006M"), ("20261010", "20261103", "003W"),
    ("20261030", "20261103", "004D"), ("20261110", "20261103", None),
])
def test_age_is_computed_before_the_birth_date_goes(birth: str, study: str,
                                                     age: str | None) -> None:
    ds = _first()
    del ds.PatientAge
    ds.PatientBirthDate = birth
    ds.StudyDate = study
    _pseudonymised(ds)
    assert ds.get("PatientAge") == age
    assert ds.PatientBirthDate == ""


def test_device_identity_is_kept() -> None:
    original = _first()
    ds = _pseudonymised(_first())
    for keyword in ("StationName", "DeviceSerialNumber", "Manufacturer", "ManufacturerModelName",
                    "SoftwareVersions", "MagneticFieldStrength"):
        assert ds[keyword].value == original[keyword].value, keyword
    assert ds.InstitutionName == ""


def test_classification_descriptors_are_kept() -> None:
    original = _first()
    ds = _pseudonymised(_first())
    for keyword in ("SeriesDescription", "ProtocolName", "SequenceName"):
        assert ds[keyword].value == original[keyword].value, keyword
    assert ds.StudyDescription == "NEURO research"


@pytest.mark.parametrize(("description", "cleaned"), [
    ("t1_mprage_DOE", "t1_mprage"),
    ("DOE_t1_mprage", "t1_mprage"),
    ("jane doe fmri", "fmri"),
    ("JANEDOE_dwi", "dwi"),
    ("bold_rest_PID-0001", "bold_rest"),
    ("t1 17.03.1954", "t1"),
    ("t1_19540317", "t1"),
    ("t1 1954-03-17 sag", "t1 sag"),
    ("t1_mprage_sag_1mm", "t1_mprage_sag_1mm"),
    ("ep2d_diff_b1000_64dir", "ep2d_diff_b1000_64dir"),
    ("DOES_NOT_MATCH_DOEX", "DOES_NOT_MATCH_DOEX"),
])
def test_descriptors_are_cleaned_of_the_patient(description: str, cleaned: str) -> None:
    ds = _first()
    ds.SeriesDescription = description
    ds.ProtocolName = description
    _pseudonymised(ds)
    assert ds.SeriesDescription == cleaned
    assert ds.ProtocolName == cleaned


def test_other_descriptors_are_removed() -> None:
    ds = _pseudonymised(_identifying())
    for keyword in ("ImageComments", "AdditionalPatientHistory", "MedicalAlerts",
                    "RequestAttributesSequence"):
        assert keyword not in ds


# --- private attributes, overlays, markers ------------------------------------------------


def test_siemens_csa_block_is_kept_byte_identical_and_other_blocks_go() -> None:
    original = _identifying()
    ds = _pseudonymised(_identifying())
    assert ds[0x00290010].value == "SIEMENS CSA HEADER"
    assert ds[0x00291010].value == original[0x00291010].value
    assert ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0C].value == 1000
    for tag in (0x00330010, 0x00331001):  # ACME PATIENT NOTES
        assert tag not in ds
    assert not any(elem.value == "ACME IMAGING" for elem in ds if elem.tag.is_private_creator)


def test_ge_block_keeps_parameters_and_loses_identifiers() -> None:
    ds = _pseudonymised(_identifying())
    ge = ds.private_block(0x0043, "GEMS_PARM_01")
    assert list(ge[0x39].value) == [1000, 8, 0, 0]
    assert ge[0x72].value == Pseudonymiser(KEY).uid(GE_PARADIGM_UID)
    for offset in (0x61, 0x62, 0x85):
        assert ge.get_tag(offset) not in ds


def test_overlays_and_curves_are_removed_whole() -> None:
    ds = _pseudonymised(_identifying())
    assert [tag for tag in _tags(ds) if tag >> 16 in (0x5000, 0x6000)] == []


def test_the_result_is_marked_and_rereads_as_valid_dicom() -> None:
    data = _encode(_pseudonymised(_identifying()))
    old_mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        ds = dcmread(io.BytesIO(data))
        values = [elem.value for elem in _walk(ds)]  # converts, hence validates, every value
    finally:
        config.settings.reading_validation_mode = old_mode
    assert values
    assert data[:128] == b"\x00" * 128
    assert ds.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113109", "113108", "113107", "113105", "113111"}
    assert {item.CodingSchemeDesignator for item in ds.DeidentificationMethodCodeSequence} == {
        "DCM"}
    assert any(value.startswith("HarmoNet ") for value in ds.DeidentificationMethod)
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.pixel_array.shape == (64, 64)


def _walk(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


@pytest.mark.parametrize(("keyword", "action"), [
    ("InstitutionName", Action.EMPTY),  # X/Z/D
    ("OperatorIdentificationSequence", Action.REMOVE),  # X/D on a sequence
    ("ReferencedImageSequence", Action.RECURSE),  # X/Z/U*
    ("ProtocolName", Action.CLEAN),  # X/D, Clean Descriptors
    ("DateOfLastCalibration", Action.SHIFT),  # X, Device Identity K vs Modified Dates C
    ("TimeOfLastCalibration", Action.KEEP),
    ("StationName", Action.KEEP),  # X/Z/D, Device Identity K
    ("PatientWeight", Action.KEEP),  # X, Patient Characteristics K
    ("PatientBirthDate", Action.EMPTY),
    ("FrameOfReferenceUID", Action.UID),
    ("CreatorVersionUID", Action.UID_OUTSIDE_DICOM_ROOT),
    ("SOPClassUID", Action.KEEP),
    ("EvaluatorName", Action.EMPTY),  # a PN Table E.1-1 does not list
])
def test_profile_actions(keyword: str, action: Action) -> None:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    assert action_for(tag) is action
