"""Fingerprints from Siemens (CSA, Enhanced), GE and Philips header conventions."""

from __future__ import annotations

import warnings

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from compliance_service.fingerprint import series_fingerprint
from compliance_service.vendors import ascconv, normalise_manufacturer, read_csa
from tests.unit.compliance.factories import (
    BOLD,
    T1,
    encode_csa2,
    ge,
    philips,
    phoenix_protocol,
    roundtrip,
    series_headers,
    siemens,
    siemens_enhanced,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nibabel.nicom import csareader


def fingerprint_of(factory, acq, **options):
    headers, count = series_headers(factory, acq, **options)
    return series_fingerprint(headers, instance_count=count)


def test_csa2_factory_round_trips_through_nibabel() -> None:
    raw = encode_csa2({
        "PhaseEncodingDirectionPositive": ("IS", ["1"]),
        "NumberOfImagesInMosaic": ("US", ["36"]),
        "SliceNormalVector": ("FD", ["0.0", "0.5", "1.0"]),
        "ImaTextLabel": ("LO", ["odd length"]),
    })
    parsed = csareader.read(raw)
    assert parsed["type"] == 2 and parsed["n_tags"] == 4
    assert csareader.get_scalar(parsed, "PhaseEncodingDirectionPositive") == 1
    assert csareader.get_scalar(parsed, "NumberOfImagesInMosaic") == 36
    assert list(csareader.get_vector(parsed, "SliceNormalVector", 3)) == [0.0, 0.5, 1.0]
    assert parsed["tags"]["ImaTextLabel"]["items"] == ["odd length"]


def test_ascconv_parsing_reads_values_and_ignores_comments() -> None:
    text = phoenix_protocol({"sPat.lAccelFactPE": "3", "sKSpace.ucPhasePartialFourier": "0x08"})
    text = text.replace("= 3", "= 3\t# GRAPPA")
    assert ascconv(text) == {"sPat.lAccelFactPE": "3", "sKSpace.ucPhasePartialFourier": "0x08"}
    assert ascconv(None) == {} and ascconv("no block here") == {}


def test_siemens_classic_standard_and_csa_values() -> None:
    fp = fingerprint_of(siemens, T1)
    assert fp["Manufacturer"] == "siemens"
    assert (fp["RepetitionTime"], fp["EchoTime"], fp["InversionTime"], fp["FlipAngle"]) == (
        2300.0, 2.98, 900.0, 9.0)
    assert fp["PixelSpacing"] == [1.0, 1.0] and fp["AcquisitionMatrix"] == [0, 256, 256, 0]
    assert fp["ScanningSequence"] == "GR\\IR" and fp["MRAcquisitionType"] == "3D"
    assert fp["PhaseEncodingPolarity"] == 1 and fp["PhaseEncodingDirection"] == "i"
    assert fp["ParallelReductionFactorInPlane"] == 2.0
    assert fp["PartialFourier"] == 0.75
    assert fp["MultibandFactor"] is None  # no SMS entry in the protocol: unknown, not 1
    assert (fp["NumberOfSlices"], fp["NumberOfVolumes"]) == (4, 1)


@pytest.mark.parametrize(("bits", "fraction"), [(0x01, 0.5), (0x02, 0.625), (0x04, 0.75),
                                                (0x08, 0.875), (0x10, 1.0)])
def test_siemens_partial_fourier_map(bits: int, fraction: float) -> None:
    assert fingerprint_of(siemens, T1, partial_fourier=bits)["PartialFourier"] == fraction


@pytest.mark.parametrize(("pe", "polarity", "direction"), [
    ("COL", 1, "j-"), ("COL", -1, "j"), ("ROW", 1, "i"), ("ROW", -1, "i-"),
])
def test_siemens_polarity_follows_dcm2niix(pe: str, polarity: int, direction: str) -> None:
    fp = fingerprint_of(siemens, BOLD.but(phase_encoding=pe, polarity=polarity))
    assert fp["PhaseEncodingPolarity"] == polarity
    assert fp["PhaseEncodingDirection"] == direction


def test_siemens_mosaic_counts_slices_from_csa_and_volumes_from_instances() -> None:
    fp = fingerprint_of(siemens, BOLD, mosaic=True)
    assert (fp["NumberOfSlices"], fp["NumberOfVolumes"]) == (36, 5)
    assert fp["MultibandFactor"] == 3


def test_siemens_non_mosaic_time_series_counts_from_acquisition_numbers() -> None:
    fp = fingerprint_of(siemens, BOLD.but(slices=10, volumes=4))
    assert (fp["NumberOfSlices"], fp["NumberOfVolumes"]) == (10, 4)


def test_siemens_without_csa_reports_derived_values_unknown() -> None:
    fp = fingerprint_of(siemens, T1, csa=False)
    assert fp["RepetitionTime"] == 2300.0
    for key in ("PhaseEncodingPolarity", "PhaseEncodingDirection", "PartialFourier",
                "ParallelReductionFactorInPlane", "MultibandFactor"):
        assert fp[key] is None


def test_a_malformed_csa_header_is_unknown_not_an_error() -> None:
    ds = siemens(T1)
    ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = b"SV10\x04\x03\x02\x01" + (
        b"\xff" * 8)
    assert read_csa(ds, element=0x10) is None
    fp = series_fingerprint([ds], instance_count=1)
    assert fp["PhaseEncodingPolarity"] is None and fp["EchoTime"] == 2.98


def test_siemens_enhanced_reads_functional_groups() -> None:
    fp = series_fingerprint([siemens_enhanced(BOLD, volume=v) for v in (1, 3, 5)],
                            instance_count=5)
    assert fp["Manufacturer"] == "siemens"
    assert (fp["RepetitionTime"], fp["EchoTime"], fp["FlipAngle"]) == (2000.0, 30.0, 90.0)
    assert fp["PixelSpacing"] == [3.0, 3.0] and fp["SliceThickness"] == 3.0
    assert fp["InPlanePhaseEncodingDirection"] == "COL"
    assert fp["AcquisitionMatrix"] == [64, 0, 0, 64]
    assert fp["SequenceName"] == "epfid2d1_64" and fp["PixelBandwidth"] == 240.0
    assert fp["ParallelReductionFactorInPlane"] == 2.0 and fp["PartialFourier"] == 1.0
    assert (fp["NumberOfSlices"], fp["NumberOfVolumes"]) == (36, 5)
    # XA keeps polarity in a private block the receiver does not keep: unknown
    assert fp["PhaseEncodingPolarity"] is None and fp["PhaseEncodingDirection"] is None


def test_enhanced_inversion_time_comes_from_mr_modifier() -> None:
    fp = series_fingerprint([siemens_enhanced(T1)], instance_count=1)
    assert fp["InversionTime"] == 900.0 and fp["NumberOfSlices"] == 4


@pytest.mark.parametrize("implicit", [False, True])
def test_ge_private_tags(implicit: bool) -> None:
    fp = fingerprint_of(ge, BOLD.but(parallel_factor=3), implicit=implicit)
    assert fp["Manufacturer"] == "ge"
    assert fp["ParallelReductionFactorInPlane"] == 3.0  # 1 / 0.333333
    assert fp["MultibandFactor"] == 3
    assert fp["PartialFourier"] is None  # GE does not store the fraction
    assert fp["SoftwareVersions"] == "27\\LX\\syngo MR E11"
    assert (fp["NumberOfSlices"], fp["NumberOfVolumes"]) == (36, 5)


@pytest.mark.parametrize(("reordering", "polarity", "direction"), [
    ("LINEAR", 1, "j-"), ("REVERSE_LINEAR", -1, "j"), (None, None, None),
])
def test_ge_polarity_from_rectilinear_phase_encode_reordering(
    reordering: str | None, polarity: int | None, direction: str | None
) -> None:
    fp = fingerprint_of(ge, BOLD, reordering=reordering)
    assert fp["PhaseEncodingPolarity"] == polarity
    assert fp["PhaseEncodingDirection"] == direction


def test_philips_polarity_is_unknown_and_private_counts_are_read() -> None:
    fp = fingerprint_of(philips, BOLD)
    assert fp["Manufacturer"] == "philips"
    assert fp["InPlanePhaseEncodingDirection"] == "COL"
    assert fp["PhaseEncodingPolarity"] is None and fp["PhaseEncodingDirection"] is None
    assert fp["MultibandFactor"] is None and fp["PartialFourier"] is None
    assert (fp["NumberOfSlices"], fp["NumberOfVolumes"]) == (36, 5)


def test_header_order_does_not_matter() -> None:
    headers, count = series_headers(siemens, BOLD.but(slices=6, volumes=3))
    forward = series_fingerprint(headers, instance_count=count)
    assert series_fingerprint(headers[::-1], instance_count=count) == forward


def test_a_bare_header_gives_unknowns_not_errors() -> None:
    ds = Dataset()
    ds.SeriesDescription = "what is this"
    # as read from a file: the bad DS only fails when the value is converted
    ds[0x00180080] = RawDataElement(Tag(0x00180080), "DS", 12, b"not a number", 0, True, True)
    fp = series_fingerprint([ds], instance_count=3)
    assert fp["SeriesDescription"] == "what is this"
    assert fp["RepetitionTime"] is None and fp["NumberOfSlices"] is None
    assert series_fingerprint([], instance_count=0) == {}


def test_one_header_of_many_cannot_count_slices() -> None:
    fp = series_fingerprint([siemens(T1.but(volumes=1))], instance_count=4)
    assert fp["NumberOfSlices"] is None


@pytest.mark.parametrize(("name", "normalised"), [
    ("SIEMENS", "siemens"), ("Siemens Healthineers", "siemens"), ("GE MEDICAL SYSTEMS", "ge"),
    ("GE Healthcare", "ge"), ("Philips Medical Systems", "philips"), ("Philips", "philips"),
    ("Canon_MEC ", "canon_mec"), ("", None), (None, None), ("General Electric", "ge"),
])
def test_manufacturer_normalisation(name: str | None, normalised: str | None) -> None:
    assert normalise_manufacturer(name) == normalised


def test_fingerprint_survives_json() -> None:
    import json

    fp = fingerprint_of(ge, BOLD)
    assert json.loads(json.dumps(fp)) == fp
    assert roundtrip  # the factory writes real Part 10 files
