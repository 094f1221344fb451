"""Synthetic multi-site feature tables with known site effects (ground truth kept)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.events import SeriesManifest, SeriesQC, StudyQCCompleted, StudyReceived


@dataclass(frozen=True)
class SiteTable:
    features: NDArray[np.float64]  # (n_scans, n_features)
    site: list[str]
    age: NDArray[np.float64]
    sex: list[str]
    age_slope: NDArray[np.float64]  # (n_features,) true effect per year
    site_shift: dict[str, NDArray[np.float64]]  # additive site effect per feature
    site_scale: dict[str, NDArray[np.float64]]  # multiplicative site effect per feature

    @property
    def covariates(self) -> dict[str, list[object]]:
        return {"age": list(self.age), "sex": list(self.sex)}


def site_table(
    *,
    seed: int = 0,
    scans_per_site: dict[str, int] | None = None,
    n_features: int = 30,
    site_effects: bool = True,
) -> SiteTable:
    """Features = baseline + age slope + sex effect + site shift + site-scaled noise.

    Ages are on a 0.25-year grid so they are exact in float32: neuroCombat casts continuous
    covariates to float32, which would otherwise differ from our float64 design by ~1e-8.
    """
    rng = np.random.default_rng(seed)
    counts = scans_per_site or {"milan": 40, "oslo": 55, "paris": 30, "porto": 45}
    site = [s for s, n in counts.items() for _ in range(n)]
    n = len(site)
    age = np.round(rng.uniform(20, 80, n) * 4) / 4
    sex = [str(x) for x in rng.choice(["F", "M"], n)]
    baseline = rng.uniform(2.0, 4.0, n_features)
    age_slope = rng.normal(-0.01, 0.004, n_features)
    sex_effect = rng.normal(0.1, 0.05, n_features)
    shift = {s: rng.normal(0, 0.3 if site_effects else 0.0, n_features) for s in counts}
    scale = {
        s: rng.uniform(0.6, 1.8, n_features) if site_effects else np.ones(n_features)
        for s in counts
    }
    noise = rng.normal(0, 0.15, (n, n_features))
    features = (
        baseline
        + age[:, None] * age_slope
        + np.array([x == "M" for x in sex])[:, None] * sex_effect
        + np.stack([shift[s] for s in site])
        + noise * np.stack([scale[s] for s in site])
    )
    return SiteTable(features, site, age, sex, age_slope, shift, scale)


HARMONIZE_FEATURES = ("gm_volume_ml", "wm_volume_ml", "csf_volume_ml", "icv_ml")


def study_events(
    table: SiteTable,
    i: int,
    *,
    kind: str = "anatomical",
    software: str = "VE11C",
    features: tuple[str, ...] = HARMONIZE_FEATURES,
) -> tuple[StudyReceived, StudyQCCompleted]:
    """The `study.received` and `study.qc.completed` of scan `i` of a table whose columns are
    the QC features `HARMONIZE_FEATURES` of one T1w series (age rounded to whole years)."""
    uid, site = f"1.2.826.0.{i}", table.site[i]
    manifest = SeriesManifest(
        series_uid=f"{uid}.1", sop_class_uids=["1.2.840.10008.5.1.4.1.1.4"], instance_count=1,
        blob_prefix="dicom/x", blob_keys=["dicom/x/1.dcm"], headers={"SoftwareVersions": software},
    )
    received = StudyReceived(
        study_uid=uid, revision=1, site=site, scanner=f"{site}-prisma", subject_id=f"s{i}",
        patient_age=f"{round(table.age[i]):03d}Y", patient_sex=table.sex[i], instance_count=1,
        series=[manifest],
    )
    values = dict(zip(HARMONIZE_FEATURES, (float(v) for v in table.features[i]), strict=True))
    series = SeriesQC(series_uid=f"{uid}.1", series_type="t1w", kind=kind,  # type: ignore[arg-type]
                      features={f: values[f] for f in features})
    completed = StudyQCCompleted(study_uid=uid, revision=1, site=site, scanner=f"{site}-prisma",
                                 series=[series])
    return received, completed
