"""`harmonet demo` without a network: the consortium's data, its headers and the watching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from compliance_service.check import check_study
from compliance_service.fingerprint import series_fingerprint
from compliance_service.vendors import normalise_manufacturer
from services import demo_data, demo_head
from services.config import load_config
from services.demo import DemoOptions, outcome_lines, summary_table
from services.demo_data import CONSORTIUM, QUICK, DemoSizes, instances, plan
from services.demo_progress import JournalSource, Observed, RegistrySource, installed_stages
from services.volume import load_dicom_series

TINY = DemoSizes(subjects=1, weeks=10, t1_slices=24, bold_slices=4, bold_volumes=3,
                 phantom_slices=3, phantom_volumes=4)


def test_the_built_in_config_accepts_every_demo_scanner() -> None:
    config = load_config(None)
    for scanner in CONSORTIUM:
        ref = config.scanner_for_ae(scanner.ae_title)
        assert ref is not None, scanner.ae_title
        assert (ref.site, ref.scanner.id) == (scanner.site, scanner.scanner_id)


def test_three_sites_three_vendors_one_drifting_one_deviating() -> None:
    assert len({s.site for s in CONSORTIUM}) == 3
    assert {normalise_manufacturer(s.identity.manufacturer) for s in CONSORTIUM} == {
        "siemens", "ge", "philips"}
    assert [s.scanner_id for s in CONSORTIUM if s.drifts] == ["naples-signa"]
    assert [s.site for s in CONSORTIUM if s.deviates] == ["leiden"]


def test_plan_is_weekly_in_acquisition_order_and_deterministic() -> None:
    schedule = plan(CONSORTIUM, QUICK, seed="s")
    for studies in schedule.values():
        phantoms = [s for s in studies if s.kind == "phantom"]
        assert [s.week for s in phantoms] == list(range(1, QUICK.weeks + 1))
        assert [s.spec.study_date for s in studies] == sorted(s.spec.study_date for s in studies)
        assert sum(s.kind == "subject" for s in studies) == QUICK.subjects
    # the QC chart's baseline must be complete before the drift can alert
    assert QUICK.weeks > demo_data.DRIFT_AFTER_WEEK
    again = plan(CONSORTIUM, QUICK, seed="s")
    other = plan(CONSORTIUM, QUICK, seed="t")
    first, same, different = (next(iter(instances(s["milan-prisma"][0])))
                              for s in (schedule, again, other))
    assert first.SOPInstanceUID == same.SOPInstanceUID
    assert first.StudyInstanceUID != different.StudyInstanceUID


def _write(study: demo_data.DemoStudy, folder: Path) -> dict[int, list[Path]]:
    series: dict[int, list[Path]] = {}
    for index, ds in enumerate(instances(study)):
        path = folder / f"{ds.SeriesNumber}" / f"{index:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        series.setdefault(int(ds.SeriesNumber), []).append(path)
    return series


@pytest.mark.parametrize("scanner", CONSORTIUM, ids=lambda s: s.scanner_id)
def test_subject_series_classify_by_vendor_names_and_only_leiden_deviates(
    scanner: demo_data.DemoScanner, tmp_path: Path
) -> None:
    [study] = [s for s in plan((scanner,), TINY, seed="v")[scanner.scanner_id]
               if s.kind == "subject"]
    written = _write(study, tmp_path)
    config = load_config(None)
    fingerprints = {str(n): series_fingerprint(
        [dcmread(p, stop_before_pixels=True) for p in paths],
        instance_count=len(paths)) for n, paths in written.items()}
    results = check_study(fingerprints, config.protocol_for_site(scanner.site),
                          site=scanner.site, scanner=scanner.scanner_id, references={})
    by_type = {r.series_type: r for r in results}
    assert set(by_type) == {"t1w", "bold"}
    assert by_type["bold"].verdict == "compliant"
    expected = "deviant" if scanner.deviates else "compliant"
    assert by_type["t1w"].verdict == expected, by_type["t1w"].deviations
    if scanner.deviates:
        assert [d.parameter for d in by_type["t1w"].deviations] == ["RepetitionTime"]
    bold = load_dicom_series(written[2])
    assert bold.data.shape[2:] == (TINY.bold_slices, TINY.bold_volumes)  # mosaics unpacked
    t1 = load_dicom_series(written[1])
    assert t1.data.shape == (256, 256, TINY.t1_slices)


def test_site_effects_scale_intensity_bias_and_noise() -> None:
    rng = np.random.default_rng(0)
    clean = np.full((32, 32, 8), 800.0, dtype=np.float32)
    flat = demo_head.SiteEffects(intensity_scale=1.2, bias_amplitude=0.0, noise_sigma=1e-3)
    assert demo_head.scanned(clean, flat, rng).mean() == pytest.approx(960, rel=1e-3)
    biased = demo_head.SiteEffects(intensity_scale=1.0, bias_amplitude=0.3, noise_sigma=1e-3)
    image = demo_head.scanned(clean, biased, rng)
    assert image.max() / image.min() > 1.5
    noisy = demo_head.SiteEffects(intensity_scale=1.0, bias_amplitude=0.0, noise_sigma=20.0)
    assert demo_head.scanned(clean, noisy, rng).std() == pytest.approx(20, rel=0.1)


def test_realistic_head_has_tissues_skull_and_air() -> None:
    labels, _ = demo_head.head_labels()
    counts = np.bincount(labels.ravel(), minlength=6)
    assert all(counts[1:] > 1000)  # csf, gm, wm, skull, scalp
    assert counts[0] > labels.size * 0.3  # air around the head


def test_drifting_scanner_loses_sfnr_after_the_baseline(tmp_path: Path) -> None:
    from qc_service.measure import measure_paths

    [scanner] = [s for s in CONSORTIUM if s.drifts]
    sizes = DemoSizes(subjects=0, weeks=10, phantom_volumes=20)
    phantoms = plan((scanner,), sizes, seed="d")[scanner.scanner_id]
    sfnr = []
    for study in (phantoms[0], phantoms[-1]):
        paths = _write(study, tmp_path / str(study.week))[1]
        sfnr.append(measure_paths(paths, series_type="fbirn", is_phantom=True).metrics["sfnr"])
    assert sfnr[1] < 0.9 * sfnr[0]


def _event(kind: str, **data: object) -> str:
    return json.dumps({"type": f"org.harmonet.{kind}", "data": data})


def test_journal_source_reads_only_complete_new_lines(tmp_path: Path) -> None:
    journal = tmp_path / "events.jsonl"
    source = JournalSource(journal, stages=("study.qc.completed", "study.received"))
    assert not source.poll().seen("study.received")
    journal.write_text(
        _event("study.received", study_uid="a", scanner="x") + "\n"
        + _event("study.compliance.checked", study_uid="a", scanner="x",
                 series=[{"verdict": "deviant"}]) + "\n"
        + _event("scanner.stability.alert", scanner="x", metric="sfnr", state="out_of_control")
        + "\n" + _event("study.qc.completed", study_uid="a", scanner="x")[:20])
    observed = source.poll()
    assert observed.at("study.received", "x") == {"a"}
    assert observed.deviant["x"] == {"a"} and observed.alerts["x"] == {"sfnr"}
    assert not observed.seen("study.qc.completed")
    with journal.open("a") as handle:
        handle.write(_event("study.qc.completed", study_uid="a", scanner="x")[20:] + "\n")
    assert source.poll().at("study.qc.completed", "x") == {"a"}


def test_installed_stages_end_with_the_latest_installed_service() -> None:
    assert installed_stages({"receiver", "compliance", "qc"})[0] == "study.qc.completed"
    assert installed_stages({"receiver", "qc", "harmonize", "registry"})[0] == "study.processed"


def test_summary_table_and_outcomes(tmp_path: Path) -> None:
    from services.demo import Sent

    options = DemoOptions(host="h", port=1, called_ae="A", api="http://a", token=None,
                          metrics_url="http://m", data_dir=tmp_path, sizes=QUICK,
                          scanners=CONSORTIUM, seed="s", timeout=1, progress=False)
    observed = Observed()
    observed.at("study.qc.completed", "naples-signa").update({"1", "2"})
    observed.alerts["naples-signa"].add("sfnr")
    sent = {s.scanner_id: Sent(studies=2) for s in CONSORTIUM}
    table = summary_table(options, sent, observed, stage="study.qc.completed")
    assert "naples-signa" in table and "1 (sfnr)" in table
    lines = outcome_lines(options, observed)
    assert "[ok] naples-signa" in lines and "[MISSING] leiden" in lines


class CannedRegistry(RegistrySource):
    """The registry's paginated answers, without HTTP."""

    def __init__(self, pages: dict[str, list[dict[str, object]]]) -> None:
        super().__init__("http://registry", "token")
        self.pages_by_path = pages
        self.requested: list[str] = []

    def get(self, path: str) -> Any:
        self.requested.append(path)
        route, _, query = path.partition("?")
        params = dict(part.split("=") for part in query.split("&"))
        items = self.pages_by_path[route]
        offset, limit = int(params["offset"]), int(params["limit"])
        return {"items": items[offset:offset + limit], "total": len(items), "limit": limit,
                "offset": offset}


def test_registry_source_reads_every_page_of_studies_and_alerts() -> None:
    studies = [{"study_uid": str(i), "scanner": "leiden-ingenia", "processed": i % 2 == 0,
                "compliance_status": "excluded" if i == 3 else "compliant"}
               for i in range(2500)]
    alerts = [{"scanner": "naples-signa", "metric": "sfnr", "state": "out_of_control"},
              {"scanner": "milan-prisma", "metric": "snr", "state": "back_in_control"}]
    source = CannedRegistry({"/api/v1/studies": studies, "/api/v1/alerts": alerts})
    observed = source.poll()
    assert len(observed.at("study.received", "leiden-ingenia")) == 2500
    assert len(observed.at("study.processed", "leiden-ingenia")) == 1250
    assert observed.deviant["leiden-ingenia"] == {"3"}
    assert dict(observed.alerts) == {"naples-signa": {"sfnr"}}
    assert sum(p.startswith("/api/v1/studies") for p in source.requested) == 3


def test_a_silent_last_stage_falls_back_to_the_one_before_after_the_grace() -> None:
    from services.demo import GRACE_SECONDS, Sent, _silent_later_stage

    stages = ("study.processed", "study.qc.completed", "study.received")
    sent = {"x": Sent(studies=2)}
    observed = Observed()
    observed.at("study.qc.completed", "x").update({"a", "b"})
    since: dict[str, float] = {}
    assert _silent_later_stage(stages, sent, observed, since, 100.0) is None
    assert _silent_later_stage(stages, sent, observed, since, 100.0 + GRACE_SECONDS) == (
        "study.qc.completed")
    observed.at("study.processed", "x").add("a")  # the registry works, only slowly
    assert _silent_later_stage(stages, sent, observed, since, 1e9) is None
