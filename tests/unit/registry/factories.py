"""Events of one study as the pipeline would publish them, with deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.events import (
    TYPE_PREFIX,
    CloudEvent,
    Deviation,
    ScannerConfigurationChanged,
    ScannerPhantomMeasured,
    ScannerStabilityAlert,
    SeriesCompliance,
    SeriesManifest,
    SeriesQC,
    StudyComplianceChecked,
    StudyQCCompleted,
    StudyReceived,
    deterministic_id,
    make_event,
    schema_url,
)
from services.events import ConfigurationChange as Change

SITES = {"milan": "milan-prisma", "naples": "naples-signa"}
TYPES = {"t1w": "T1_MPRAGE", "bold": "rest_BOLD"}


def series_uid(study_uid: str, kind: str) -> str:
    return f"{study_uid}.{list(TYPES).index(kind) + 1}"


def received(study_uid: str, *, site: str = "milan", subject: str = "subj001",
             revision: int = 1, kinds: tuple[str, ...] = ("t1w", "bold"),
             phantom: bool = False) -> CloudEvent:
    scanner = SITES[site]
    series = [
        SeriesManifest(
            series_uid=series_uid(study_uid, kind), series_number=n,
            series_description=TYPES[kind], modality="MR",
            sop_class_uids=["1.2.840.10008.5.1.4.1.1.4"], instance_count=10,
            blob_prefix=f"dicom/{site}/{study_uid}/{series_uid(study_uid, kind)}",
            blob_keys=[f"dicom/{site}/{study_uid}/{series_uid(study_uid, kind)}/1.dcm"],
            headers={"Manufacturer": "SIEMENS", "ManufacturerModelName": "Prisma",
                     "SoftwareVersions": "syngo MR XA30"},
        )
        for n, kind in enumerate(kinds, 1)
    ]
    data = StudyReceived(study_uid=study_uid, revision=revision, site=site, scanner=scanner,
                         subject_id=subject, is_phantom=phantom, study_date="20260101",
                         patient_age="042Y", patient_sex="F", instance_count=10 * len(kinds),
                         series=series)
    return make_event("study.received", data, source="test/receiver", subject=study_uid,
                      id_parts=(study_uid, revision))


def compliance(study_uid: str, *, site: str = "milan", revision: int = 1,
               kinds: tuple[str, ...] = ("t1w", "bold"), deviant: str | None = None,
               phantom: bool = False) -> CloudEvent:
    series = [
        SeriesCompliance(
            series_uid=series_uid(study_uid, kind), series_type=kind,
            verdict="deviant" if kind == deviant else "compliant",
            severity="exclude" if kind == "t1w" else "warning",
            deviations=[Deviation(parameter="RepetitionTime", expected=2300, actual=2500)]
            if kind == deviant else [],
        )
        for kind in kinds
    ]
    data = StudyComplianceChecked(study_uid=study_uid, revision=revision, site=site,
                                  scanner=SITES[site], is_phantom=phantom, series=series)
    return make_event("study.compliance.checked", data, source="test/compliance",
                      subject=study_uid, id_parts=(study_uid, revision))


def qc(study_uid: str, *, site: str = "milan", revision: int = 1,
       kinds: tuple[str, ...] = ("t1w", "bold")) -> CloudEvent:
    series = [
        SeriesQC(
            series_uid=series_uid(study_uid, kind), series_type=kind,
            kind="anatomical" if kind == "t1w" else "functional",
            metrics={"snr": 12.5, "cjv": 0.4} if kind == "t1w" else {"tsnr": 55.0},
            features={"gm_volume": 650.0, "wm_volume": 480.0} if kind == "t1w" else {},
            report={"mosaic": f"qc/{site}/{study_uid}/r{revision}/{series_uid(study_uid, kind)}"
                              "/mosaic.png"},
        )
        for kind in kinds
    ]
    data = StudyQCCompleted(study_uid=study_uid, revision=revision, site=site,
                            scanner=SITES[site], series=series)
    return make_event("study.qc.completed", data, source="test/qc", subject=study_uid,
                      id_parts=(study_uid, revision))


def harmonized(study_uid: str, *, site: str = "milan", revision: int = 1,
               status: str = "harmonized", features: dict[str, float] | None = None,
               model_version: str = "sha256:abc") -> CloudEvent:
    """Built by hand: `status`, `reason`, `batch` are additive fields of study.harmonized."""
    data: dict[str, Any] = {
        "study_uid": study_uid, "revision": revision, "site": site, "scanner": SITES[site],
        "model_version": model_version, "status": status, "batch": site,
        "reason": None if status == "harmonized" else "site not in the model yet",
        "features": (features if features is not None else
                     {"gm_volume": 640.0, "wm_volume": 470.0}) if status == "harmonized" else {},
    }
    return CloudEvent(
        id=deterministic_id("study.harmonized", study_uid, revision, status),
        source="test/harmonize", type=TYPE_PREFIX + "study.harmonized",
        time=datetime.now(UTC), subject=study_uid, dataschema=schema_url("study.harmonized"),
        data=data)


def study_events(study_uid: str, **kwargs: Any) -> list[CloudEvent]:
    site = kwargs.get("site", "milan")
    return [received(study_uid, **kwargs), compliance(study_uid, site=site),
            qc(study_uid, site=site), harmonized(study_uid, site=site)]


def phantom(study_uid: str, *, site: str = "milan", snr: float = 100.0,
            series: str = "1") -> CloudEvent:
    data = ScannerPhantomMeasured(site=site, scanner=SITES[site], study_uid=study_uid,
                                  series_uid=f"{study_uid}.{series}", phantom_type="fbirn",
                                  acquired_at="20260101", metrics={"snr": snr, "sfnr": 200.0},
                                  zscores={"snr": 0.5})
    return make_event("scanner.phantom.measured", data, source="test/qc", subject=SITES[site],
                      id_parts=(SITES[site], study_uid, f"{study_uid}.{series}", 1))


def alert(study_uid: str, *, site: str = "milan") -> CloudEvent:
    data = ScannerStabilityAlert(site=site, scanner=SITES[site], metric="snr",
                                 state="out_of_control", value=80.0, zscore=-3.5,
                                 study_uid=study_uid)
    return make_event("scanner.stability.alert", data, source="test/qc", subject=SITES[site],
                      id_parts=(SITES[site], "snr", "out_of_control", study_uid))


def configuration_changed(study_uid: str, *, site: str = "milan") -> CloudEvent:
    data = ScannerConfigurationChanged(
        site=site, scanner=SITES[site], study_uid=study_uid,
        changes=[Change(parameter="SoftwareVersions", previous="syngo MR XA30",
                        current="syngo MR XA31")])
    return make_event("scanner.configuration.changed", data, source="test/compliance",
                      subject=SITES[site], id_parts=(site, SITES[site], study_uid, 1))
