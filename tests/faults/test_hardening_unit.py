"""The receiver fixes the fault tests led to, at unit level (no network)."""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset
from pydicom.uid import UID

from receiver import status
from receiver.pseudonymise import Pseudonymiser
from receiver.validation import validate_instance
from services.synthetic import iter_instances, small_study

MR = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")


def _instance() -> Dataset:
    return next(iter_instances(small_study("faults-unit", t1_slices=1, epi_slices=1,
                                           epi_volumes=1)))


def test_an_mr_sop_class_instance_of_another_modality_is_refused() -> None:
    ds = _instance()
    assert validate_instance(ds, context_sop_class=MR, affected_sop_instance=None) is None
    ds.Modality = "CT"
    rejection = validate_instance(ds, context_sop_class=MR, affected_sop_instance=None)
    assert rejection is not None
    assert (rejection.status, rejection.reason) == (status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                                    "modality_mismatch")
    other = copy.deepcopy(ds)
    other.SOPClassUID, other.Modality = SECONDARY_CAPTURE, "OT"
    other.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    assert validate_instance(other, context_sop_class=SECONDARY_CAPTURE,
                             affected_sop_instance=None) is None


def test_identifiers_typed_into_kept_free_text_are_cut_out_and_clean_text_is_untouched() -> None:
    ds = _instance()
    ds.AcquisitionDeviceProcessingDescription = f"recon for {ds.PatientID} DOE"
    ds.ImageFilter = "SHARP"
    named, plain = Dataset(), Dataset()
    named.CodeValue, named.CodingSchemeDesignator, named.CodeMeaning = "X", "99L", "brain, Jane"
    plain.CodeValue, plain.CodingSchemeDesignator, plain.CodeMeaning = "Y", "99L", "Janeway scan"
    ds.ProcedureCodeSequence = [named, plain]
    station, software = str(ds.StationName), str(ds.SoftwareVersions)
    Pseudonymiser(key=b"k" * 32).apply(ds)
    assert ds.AcquisitionDeviceProcessingDescription == "recon for"
    assert ds.ImageFilter == "SHARP"
    assert [i.CodeMeaning for i in ds.ProcedureCodeSequence] == ["brain", "Janeway scan"]
    assert (str(ds.StationName), str(ds.SoftwareVersions)) == (station, software)
