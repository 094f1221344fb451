"""The demo's harmonization step, done as a consortium does it.

After the first wave of studies is processed, the demo fits a ComBat model (batch = site)
on the QC features of the subjects it just sent, read from the event journal of
`harmonet up` (`study.qc.completed` for the features, `study.received` for age), installs it
with `harmonet harmonize install` while HarmoNet runs, and sends every subject's follow-up
visit: those studies arrive with a model in place and come out `harmonized`. The first
wave stays `not_applicable` (no model when it arrived); `harmonet reprocess` would revisit
it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harmonize_service.combat import CombatError, CombatModel, fit
from harmonize_service.model import to_json
from harmonize_service.study import age_in_years, study_features
from services.events import CloudEvent, StudyQCCompleted, StudyReceived

MIN_SCANS_PER_SITE = 2  # ComBat's within-site variance needs two scans of every site


@dataclass(frozen=True)
class ReferenceTable:
    """One row per human study: site, features (the columns every row has), age."""

    sites: list[str]
    feature_names: tuple[str, ...]
    features: list[list[float]]
    ages: list[float | None]

    def per_site(self) -> dict[str, int]:
        return {site: self.sites.count(site) for site in sorted(set(self.sites))}


def reference_table(journal: Path) -> ReferenceTable:
    """The human studies of the journal, their latest revision each."""
    received: dict[str, StudyReceived] = {}
    completed: dict[str, StudyQCCompleted] = {}
    lines = journal.read_bytes().splitlines() if journal.exists() else []
    for line in lines:
        if not line.strip():
            continue
        event = CloudEvent.from_json(line)
        data = event.parsed_data()
        if isinstance(data, StudyReceived) and not data.is_phantom:
            received[data.study_uid] = data
        elif isinstance(data, StudyQCCompleted):
            completed[data.study_uid] = data
    rows = [(received[uid], study_features(completed[uid]))
            for uid in sorted(received) if uid in completed]
    rows = [(study, features) for study, features in rows if features]
    names = tuple(sorted(set.intersection(*(set(f) for _, f in rows)))) if rows else ()
    return ReferenceTable(
        sites=[study.site for study, _ in rows],
        feature_names=names,
        features=[[features[n] for n in names] for _, features in rows],
        ages=[age_in_years(study.patient_age) for study, _ in rows],
    )


def fit_reference(table: ReferenceTable) -> tuple[CombatModel | None, str]:
    """A ComBat model (batch = site; age a covariate when the table has the degrees of
    freedom for it) and what was fitted, or None and why not."""
    per_site = table.per_site()
    if len(per_site) < 2 or min(per_site.values()) < MIN_SCANS_PER_SITE:
        return None, (f"needs {MIN_SCANS_PER_SITE} subjects per site and 2 sites, the demo "
                      f"sent {per_site or 'none'} (run it with --subjects 2 or more)")
    if len(table.feature_names) < 2:
        return None, f"QC measured {len(table.feature_names)} features common to every study"
    with_age = all(a is not None for a in table.ages) and (
        len(table.sites) - len(per_site) - 1 >= 2)
    covariates = {"age": [float(a) for a in table.ages if a is not None]} if with_age else None
    try:
        model = fit(table.features, table.sites, covariates,
                    feature_names=table.feature_names, batch_column="site")
    except CombatError as exc:
        return None, f"ComBat refused the table: {exc}"
    sites = ", ".join(f"{site} {n}" for site, n in per_site.items())
    return model, (f"ComBat on {len(table.sites)} subjects ({sites}), "
                   f"{len(table.feature_names)} T1w features"
                   f"{', age a covariate' if with_age else ''}")


def install(model: CombatModel, data_dir: Path, *, wait: float = 120.0) -> tuple[str | None, str]:
    """`harmonet harmonize install` with `data_dir` (the running `harmonet up` switches to
    the model); the version, or None and the command's error."""
    path = data_dir / "demo" / "harmonization-model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(model), encoding="utf-8")
    env = {**os.environ, "HARMONET_DATA_DIR": str(data_dir), "HARMONET_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "harmonize", "install", str(path),
         "--wait", str(wait)],
        env=env, capture_output=True, text=True, timeout=wait + 60, check=False)
    words = done.stdout.split()
    version = next((w for w in words if w.startswith("sha256:")), None)
    if done.returncode != 0 or version is None:  # not current (yet): no version printed
        return None, (done.stderr or done.stdout).strip()[-500:]
    return version, str(path)
