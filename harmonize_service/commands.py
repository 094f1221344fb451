"""`harmonet harmonize fit FEATURES.csv ... --out MODEL.json` and `harmonet harmonize apply
FEATURES.csv --model MODEL.json --out HARMONIZED.csv`: ComBat (or ComBat-GAM with `--smooth`)
offline on a CSV table (one row per scan); `harmonet harmonize install MODEL.json` makes a
model the one the service applies. Only argument parsing is imported eagerly."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.blobstore import FileBlobStore


def register(verbs: Any, service_parsers: dict[str, argparse.ArgumentParser]) -> None:
    actions = service_parsers["harmonize"].add_subparsers(metavar="ACTION")
    fit = actions.add_parser("fit", help="fit a ComBat model on a table of features")
    fit.add_argument("features", type=Path, help="CSV: one row per scan, one column per feature")
    fit.add_argument("--batch-col", required=True, help="column naming the batch (site, ...)")
    fit.add_argument("--covariates", default="", help="comma-separated covariate columns")
    fit.add_argument("--categorical", default="", help="which covariates are categorical")
    fit.add_argument("--ref-batch", help="reference batch: left unchanged, others mapped to it")
    fit.add_argument("--id-col", help="an identifier column passed through, not a feature")
    fit.add_argument("--mean-only", action="store_true", help="adjust location only")
    fit.add_argument("--nonparametric", action="store_true", help="non-parametric EB priors")
    fit.add_argument("--smooth", help="ComBat-GAM: a continuous covariate fitted as a spline")
    fit.add_argument("--smooth-bounds", help="LO,HI: the spline's range (default: the data's)")
    fit.add_argument("--penalty", choices=("kfold", "gcv"), default="kfold",
                     help="how each feature's smoothing penalty is chosen")
    fit.add_argument("--report", type=Path, help="write the quality report (JSON) here")
    fit.add_argument("--out", type=Path, required=True, help="model JSON to write")
    fit.set_defaults(handler=_fit)
    install = actions.add_parser("install", help="store a model and make it current")
    install.add_argument("model", type=Path)
    install.add_argument("--wait", type=float, default=60.0,
                         help="while `harmonet up` runs: seconds to wait for it to switch")
    install.set_defaults(handler=_install)
    apply = actions.add_parser("apply", help="harmonize a table of features with a fitted model")
    apply.add_argument("features", type=Path)
    apply.add_argument("--model", type=Path, required=True)
    apply.add_argument("--out", type=Path, required=True, help="harmonized CSV to write")
    apply.set_defaults(handler=_apply)
    from harmonize_service.intensity_commands import add_actions

    add_actions(actions)


def _fit(args: argparse.Namespace) -> int:
    from harmonize_service.combat import CombatError, CombatOptions, apply
    from harmonize_service.model import to_json

    covariates = _names(args.covariates)
    categorical = _names(args.categorical)
    stray = sorted(set(categorical) - set(covariates))
    if stray:
        print(f"--categorical names non-covariates: {', '.join(stray)}", file=sys.stderr)
        return 2
    try:
        header, rows = _read_table(args.features)
        non_features = {args.batch_col, *covariates, *([args.id_col] if args.id_col else [])}
        _require_columns(header, non_features)
        feature_names = [c for c in header if c not in non_features]
        options = CombatOptions(
            parametric=not args.nonparametric, mean_only=args.mean_only, ref_batch=args.ref_batch
        )
        features = _feature_matrix(header, rows, feature_names)
        batch = _column(header, rows, args.batch_col)
        values = {name: _column(header, rows, name) for name in covariates}
        model = _fit_model(args, features, batch, values, set(categorical), feature_names,
                           options)
        if args.report is not None:
            _write_report(args.report, features, apply(model, features, batch, values), batch,
                          values, categorical, feature_names)
    except (CombatError, TableError) as exc:
        print(f"harmonize fit: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(to_json(model), encoding="utf-8")
    print(f"{len(rows)} scans, {len(feature_names)} features, {len(model.batch_levels)} batches")
    return 0


def _fit_model(
    args: argparse.Namespace,
    features: Any,
    batch: list[str],
    covariates: dict[str, list[str]],
    categorical: set[str],
    feature_names: list[str],
    options: Any,
) -> Any:
    from harmonize_service.combat import fit
    from harmonize_service.gam import SmoothOptions, fit_gam

    common: dict[str, Any] = {
        "categorical": categorical,
        "feature_names": feature_names,
        "batch_column": args.batch_col,
        "options": options,
    }
    if args.smooth is None:
        return fit(features, batch, covariates, **common)
    if args.smooth not in covariates:
        raise TableError(f"--smooth {args.smooth} is not one of --covariates")
    bounds: tuple[float | None, float | None] = (None, None)
    if args.smooth_bounds:
        try:
            low, high = (float(x) for x in args.smooth_bounds.split(","))
        except ValueError as exc:
            raise TableError(f"--smooth-bounds wants LO,HI, got {args.smooth_bounds!r}") from exc
        bounds = (low, high)
    smooth = SmoothOptions(args.smooth, bounds=bounds, selection=args.penalty)
    return fit_gam(features, batch, covariates, smooth=smooth, **common)


def _write_report(
    path: Path,
    before: Any,
    after: Any,
    batch: list[str],
    covariates: dict[str, list[str]],
    categorical: list[str],
    feature_names: list[str],
) -> None:
    import json

    from harmonize_service.report import quality_report

    report = quality_report(before, after, batch, covariates, categorical=categorical,
                            feature_names=feature_names)
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    classifier = report["site_classifier"]
    print(f"site classifier AUC: before {classifier['auc_before']}, "
          f"after {classifier['auc_after']}")


def _install(args: argparse.Namespace) -> int:
    from harmonize_service.model import ModelFormatError
    from harmonize_service.store import CURRENT_KEY, put_artifact

    return install_artifact(
        args.model, action="install", what="harmonization model", errors=(ModelFormatError,),
        put=put_artifact, pointer=CURRENT_KEY, wait=args.wait,
    )


def install_artifact(
    path: Path,
    *,
    action: str,
    what: str,
    errors: tuple[type[Exception], ...],
    put: Callable[[FileBlobStore, str], str],
    pointer: str,
    wait: float,
) -> int:
    """Store a model file in the blob store (write-once) and make it current: in Redis, in
    the embedded state file while `harmonet up` is stopped, or through `harmonet up`'s
    request spool while it runs (`install_requests`); a clear error otherwise."""
    from harmonize_service.install_requests import request_install
    from services.blobstore import FileBlobStore
    from services.settings import Settings
    from services.state import StateError, StateInUse, make_state

    settings = Settings()
    refused: tuple[type[Exception], ...] = (*errors, OSError)
    try:
        version = put(FileBlobStore(settings.data_dir), path.read_text(encoding="utf-8"))
    except refused as exc:
        print(f"harmonize {action}: {exc}", file=sys.stderr)
        return 1
    try:
        state = make_state(redis_url=settings.redis_url, prefix=settings.state_prefix,
                           path=settings.embedded_state_path)
    except StateInUse:
        return request_install(settings.data_dir, pointer=pointer, version=version,
                               what=what, wait=wait)
    except StateError as exc:
        print(f"harmonize {action}: {exc}", file=sys.stderr)
        return 1
    try:
        state.set(pointer, version.encode())
    except StateError as exc:
        print(f"harmonize {action}: {exc}", file=sys.stderr)
        return 1
    finally:
        state.close()
    print(f"current {what}: {version}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from harmonize_service.combat import CombatError, apply
    from harmonize_service.model import ModelFormatError, from_json

    try:
        model = from_json(args.model.read_text(encoding="utf-8"))
        header, rows = _read_table(args.features)
        covariate_names = list(model.covariate_names)
        _require_columns(header, {model.batch_column, *covariate_names, *model.feature_names})
        harmonized = apply(
            model,
            _feature_matrix(header, rows, list(model.feature_names)),
            _column(header, rows, model.batch_column),
            {name: _column(header, rows, name) for name in covariate_names},
        )
    except (CombatError, ModelFormatError, TableError) as exc:
        print(f"harmonize apply: {exc}", file=sys.stderr)
        return 1
    _write_table(args.out, header, rows, list(model.feature_names), harmonized)
    return 0


class TableError(ValueError):
    """The CSV table is missing columns or holds non-numeric features."""


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    import csv

    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            raise TableError(f"{path} is empty")
        rows = [row for row in reader if row]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise TableError(f"{path} line {number}: {len(row)} fields, header has {len(header)}")
    return header, rows


def _require_columns(header: list[str], names: set[str]) -> None:
    missing = sorted(names - set(header))
    if missing:
        raise TableError(f"columns not in the table: {', '.join(missing)}")


def _column(header: list[str], rows: list[list[str]], name: str) -> list[str]:
    index = header.index(name)
    return [row[index] for row in rows]


def _feature_matrix(header: list[str], rows: list[list[str]], names: list[str]) -> Any:
    import numpy as np

    indices = [header.index(n) for n in names]
    try:
        return np.array([[float(row[i]) for i in indices] for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise TableError(f"a feature column is not numeric ({exc}); pass it as --id-col") from exc


def _write_table(
    path: Path, header: list[str], rows: list[list[str]], names: list[str], values: Any
) -> None:
    import csv

    indices = [header.index(n) for n in names]
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for row, harmonized in zip(rows, values, strict=True):
            out = list(row)
            for i, value in zip(indices, harmonized, strict=True):
                out[i] = repr(float(value))  # shortest repr that round-trips exactly
            writer.writerow(out)
