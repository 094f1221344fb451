"""`harmonet harmonize fit` / `apply` on CSV tables, through the registered argparse actions."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from harmonize_service.combat import CombatOptions, apply, fit
from harmonize_service.commands import register
from harmonize_service.model import from_json

from .factories import SiteTable, site_table


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="harmonet")
    verbs = parser.add_subparsers()
    service_parsers = {"harmonize": verbs.add_parser("harmonize")}
    register(verbs, service_parsers)
    args = parser.parse_args(["harmonize", *argv])
    result: int = args.handler(args)
    return result


def _write(path: Path, table: SiteTable) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        n_features = table.features.shape[1]
        writer.writerow(["scan_id", "site", "age", "sex", *(f"f{i}" for i in range(n_features))])
        for i, row in enumerate(table.features):
            values = [repr(float(v)) for v in row]
            writer.writerow(
                [f"s{i:03d}", table.site[i], repr(float(table.age[i])), table.sex[i], *values]
            )


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as stream:
        rows = list(csv.reader(stream))
    return rows[0], rows[1:]


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        ((), CombatOptions()),
        (("--nonparametric",), CombatOptions(parametric=False)),
        (("--mean-only", "--ref-batch", "oslo"), CombatOptions(mean_only=True, ref_batch="oslo")),
    ],
)
def test_fit_then_apply_matches_the_library(
    tmp_path: Path, flags: tuple[str, ...], options: CombatOptions
) -> None:
    table = site_table(seed=8, n_features=5)
    features, model_path, out = tmp_path / "t.csv", tmp_path / "m.json", tmp_path / "h.csv"
    _write(features, table)
    fit_args = ["--batch-col", "site", "--covariates", "age,sex", "--categorical", "sex"]
    assert (
        _run(
            "fit", str(features), *fit_args, "--id-col", "scan_id", *flags, "--out", str(model_path)
        )
        == 0
    )
    model = from_json(model_path.read_text())
    assert model.feature_names == ("f0", "f1", "f2", "f3", "f4")
    assert model.batch_column == "site"
    assert _run("apply", str(features), "--model", str(model_path), "--out", str(out)) == 0

    header, rows = _read(out)
    assert header[:4] == ["scan_id", "site", "age", "sex"]
    assert [r[0] for r in rows] == [f"s{i:03d}" for i in range(len(rows))]
    harmonized = np.array([[float(v) for v in r[4:]] for r in rows])
    expected_model = fit(
        table.features, table.site, table.covariates, categorical={"sex"}, options=options
    )
    expected = apply(expected_model, table.features, table.site, table.covariates)
    assert np.array_equal(harmonized, expected)


def test_fit_reports_a_single_scan_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = site_table(seed=9, scans_per_site={"milan": 10, "oslo": 1}, n_features=3)
    features = tmp_path / "t.csv"
    _write(features, table)
    code = _run(
        "fit",
        str(features),
        "--batch-col",
        "site",
        "--id-col",
        "scan_id",
        "--covariates",
        "age,sex",
        "--categorical",
        "sex",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 1
    assert "oslo (1 scan)" in capsys.readouterr().err


def test_fit_reports_missing_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = tmp_path / "t.csv"
    _write(features, site_table(seed=10, n_features=3))
    code = _run(
        "fit",
        str(features),
        "--batch-col",
        "scanner",
        "--id-col",
        "scan_id",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 1
    assert "columns not in the table: scanner" in capsys.readouterr().err


def test_apply_refuses_an_edited_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = site_table(seed=11, n_features=3)
    features, model_path = tmp_path / "t.csv", tmp_path / "m.json"
    _write(features, table)
    assert (
        _run(
            "fit",
            str(features),
            "--batch-col",
            "site",
            "--id-col",
            "scan_id",
            "--covariates",
            "age,sex",
            "--categorical",
            "sex",
            "--out",
            str(model_path),
        )
        == 0
    )
    model_path.write_text(model_path.read_text().replace('"site"', '"scanner"'))
    code = _run("apply", str(features), "--model", str(model_path), "--out", str(tmp_path / "o"))
    assert code == 1
    assert "does not match its version" in capsys.readouterr().err


def test_gam_fit_with_report_then_apply(tmp_path: Path) -> None:
    table = site_table(seed=11, n_features=6)
    features, model_path = tmp_path / "features.csv", tmp_path / "model.json"
    report_path, out = tmp_path / "report.json", tmp_path / "harmonized.csv"
    _write(features, table)
    assert _run("fit", str(features), "--batch-col", "site", "--covariates", "age,sex",
                "--categorical", "sex", "--id-col", "scan_id", "--smooth", "age",
                "--smooth-bounds", "0,100", "--report", str(report_path),
                "--out", str(model_path)) == 0
    model = from_json(model_path.read_text())
    assert [t.name for t in model.smooth_terms] == ["age"]
    assert (model.smooth_terms[0].lower, model.smooth_terms[0].upper) == (0.0, 100.0)
    assert _run("apply", str(features), "--model", str(model_path), "--out", str(out)) == 0
    import json

    report = json.loads(report_path.read_text())
    classifier = report["site_classifier"]
    # the factory's site effects are strong: obvious before, near chance after
    assert classifier["auc_before"] > 0.9
    assert classifier["auc_after"] < 0.7
    slopes = report["covariate_effects"]["age"]
    before = np.array(list(slopes["before"].values()))
    after = np.array(list(slopes["after"].values()))
    assert np.allclose(after, table.age_slope, atol=0.004)
    assert np.corrcoef(before, after)[0, 1] > 0.9


def test_smooth_must_be_a_covariate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = tmp_path / "features.csv"
    _write(features, site_table(seed=1, n_features=3))
    code = _run("fit", str(features), "--batch-col", "site", "--covariates", "sex",
                "--categorical", "sex", "--id-col", "scan_id", "--smooth", "age",
                "--out", str(tmp_path / "m.json"))
    assert code == 1
    assert "--smooth age is not one of --covariates" in capsys.readouterr().err


def test_install_makes_the_model_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harmonize_service.store import ModelStore, model_key
    from services.blobstore import FileBlobStore
    from services.state import InMemoryStateStore

    table = site_table(seed=12, n_features=4)
    model = fit(table.features, table.site, table.covariates, categorical={"sex"})
    from harmonize_service.model import to_json

    path = tmp_path / "model.json"
    path.write_text(to_json(model))
    state = InMemoryStateStore()
    monkeypatch.setenv("HARMONET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("services.state.make_state", lambda **_: state)
    assert _run("install", str(path)) == 0
    version = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    store = ModelStore(blobs=FileBlobStore(tmp_path / "data"), state=state)
    assert store.current_version() == version
    assert (tmp_path / "data" / model_key(version)).is_file()
    path.write_text(path.read_text().replace('"batch"', '"site"', 1))
    assert _run("install", str(path)) == 1
    assert store.current_version() == version


def test_intensity_fit_and_apply_on_nifti_files(tmp_path: Path) -> None:
    import nibabel as nib

    from harmonize_service.intensity import NyulModel, apply_nyul, foreground_mask
    from services.volume import load_nifti
    from tests.unit.qc.factories import synthetic_head

    pytest.importorskip("nilearn")
    paths = []
    for seed, scale in enumerate((1.0, 1.8, 0.7)):
        head = synthetic_head(step=4, sigma=12.0, seed=seed)
        path = tmp_path / f"ref{seed}.nii.gz"
        nib.save(nib.Nifti1Image(head.image * scale, head.affine), path)
        paths.append(path)
    model_path = tmp_path / "nyul.json"
    assert _run("intensity-fit", *map(str, paths), "--out", str(model_path)) == 0
    model = NyulModel.from_json(model_path.read_text())
    assert model.cohort_size == 3
    out = tmp_path / "std.nii.gz"
    assert _run("intensity-apply", str(paths[1]), "--model", str(model_path),
                "--out", str(out)) == 0
    volume = load_nifti(paths[1])
    expected = apply_nyul(model, volume.data, foreground_mask(volume.data))
    np.testing.assert_allclose(load_nifti(out).data, expected.astype(np.float32))
    assert _run("intensity-apply", str(paths[1]), "--out", str(out)) == 2  # nyul needs --model
    assert _run("intensity-apply", str(tmp_path / "missing.nii.gz"), "--method",
                "whitestripe", "--out", str(out)) == 1


def test_install_in_embedded_mode_writes_the_state_file_harmonet_up_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without Redis the model becomes current in `<data dir>/state/state.jsonl` - the store
    `harmonet up` opens. While `up` holds that file the command stores the artefact and
    queues a request that `up`'s harmonize service carries out (`install_requests.serve`)."""
    from harmonize_service.install_requests import serve, spool
    from harmonize_service.model import to_json
    from harmonize_service.store import CURRENT_KEY
    from services.blobstore import FileBlobStore
    from services.settings import Settings
    from services.state.file import FileStateStore

    table = site_table(seed=13, n_features=4)
    path = tmp_path / "model.json"
    path.write_text(to_json(fit(table.features, table.site, table.covariates,
                                categorical={"sex"})))
    monkeypatch.delenv("HARMONET_REDIS_URL", raising=False)
    monkeypatch.setenv("HARMONET_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    running_up = FileStateStore(settings.embedded_state_path)
    assert _run("install", str(path), "--wait", "0.3") == 0  # `up` is busy: queued
    assert "makes it current when it runs" in capsys.readouterr().err
    assert running_up.get(CURRENT_KEY) is None
    requests, done = spool(settings.data_dir)
    [queued] = list(requests.glob("*.json"))
    version = json.loads(queued.read_text())["version"]
    blobs = FileBlobStore(settings.data_dir)
    asyncio.run(serve(settings.data_dir, state=running_up, blobs=blobs, once=True))
    assert running_up.get(CURRENT_KEY) == version.encode()
    assert not list(requests.glob("*.json"))
    assert json.loads((done / queued.name).read_text())["error"] is None
    running_up.close()
    assert _run("install", str(path)) == 0  # `up` stopped: the command sets it itself
    assert capsys.readouterr().out.strip().rsplit(" ", 1)[-1] == version
    restarted_up = FileStateStore(settings.embedded_state_path)
    assert restarted_up.get(CURRENT_KEY) == version.encode()
    restarted_up.close()


def test_install_requests_only_point_at_stored_model_artefacts(tmp_path: Path) -> None:
    """A request naming another state key, or an artefact not in the blob store, changes
    nothing and says why in its done file."""
    from harmonize_service.install_requests import serve, spool
    from harmonize_service.store import CURRENT_KEY
    from services.blobstore import FileBlobStore
    from services.spool import write_json_atomically
    from services.state import InMemoryStateStore

    state = InMemoryStateStore()
    requests, done = spool(tmp_path)
    write_json_atomically(requests / "a.json", {"id": "a", "pointer": "receiver:anything",
                                                "version": "sha256:00"})
    write_json_atomically(requests / "b.json", {"id": "b", "pointer": CURRENT_KEY,
                                                "version": "sha256:" + "0" * 64})
    asyncio.run(serve(tmp_path, state=state, blobs=FileBlobStore(tmp_path), once=True))
    assert "not a model pointer" in json.loads((done / "a.json").read_text())["error"]
    assert "no artefact" in json.loads((done / "b.json").read_text())["error"]
    assert state.get("receiver:anything") is None and state.get(CURRENT_KEY) is None
