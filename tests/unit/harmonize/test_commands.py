"""`harmonet harmonize fit` / `apply` on CSV tables, through the registered argparse actions."""

from __future__ import annotations

import argparse
import csv
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
