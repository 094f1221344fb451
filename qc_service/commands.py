"""`harmonet qc run PATH` (offline metrics for a DICOM folder or a NIfTI file) and
`harmonet qc reset-baseline` (after a service visit). Only parsing is imported eagerly."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(verbs: Any, service_parsers: dict[str, argparse.ArgumentParser]) -> None:
    actions = service_parsers["qc"].add_subparsers(metavar="ACTION")
    run = actions.add_parser("run", help="QC metrics for a DICOM folder or a NIfTI file")
    run.add_argument("path", type=Path)
    run.add_argument(
        "--type",
        help="series type: t1w, t2w, flair, bold, fbirn, acr (default: bold for 4D, t1w for 3D)",
    )
    run.add_argument("--phantom", action="store_true", help="measure as a phantom series")
    run.set_defaults(handler=_run)
    reset = actions.add_parser("reset-baseline", help="start a new stability baseline")
    reset.add_argument("--site", required=True)
    reset.add_argument("--scanner", required=True)
    reset.add_argument("--metric", help="one metric (default: every metric of the scanner)")
    reset.set_defaults(handler=_reset)


def _run(args: argparse.Namespace) -> int:
    from qc_service.measure import SeriesMeasurement, measure_volume
    from services.volume import Volume, VolumeError, load_dicom_series, load_nifti

    is_phantom = args.phantom or args.type in ("fbirn", "acr")
    outputs: dict[str, Any] = {}
    for name, loader in _series_loaders(args.path, load_dicom_series, load_nifti):
        try:
            volume: Volume = loader()
        except VolumeError as exc:
            measured = SeriesMeasurement(kind="none", reason=f"cannot build a volume: {exc.reason}")
        else:
            series_type = args.type or ("bold" if volume.data.ndim == 4 else "t1w")
            measured = measure_volume(volume, series_type=series_type, is_phantom=is_phantom)
        outputs[name] = {
            "kind": measured.kind,
            "reason": measured.reason,
            "metrics": measured.metrics,
            "features": measured.features,
        }
    if not outputs:
        print(f"no DICOM series or NIfTI file at {args.path}", file=sys.stderr)
        return 1
    print(json.dumps(outputs, indent=2, sort_keys=True))
    return 0 if all(o["reason"] is None for o in outputs.values()) else 1


def _series_loaders(path: Path, load_dicom_series: Any, load_nifti: Any) -> list[tuple[str, Any]]:
    """(name, loader) per series found at `path`: a NIfTI file, or a folder of DICOM files."""
    from collections import defaultdict

    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from services.scu import iter_files

    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        return [(path.name, lambda: load_nifti(path))]
    by_series: dict[str, list[Path]] = defaultdict(list)
    names: dict[str, str] = {}
    for file in iter_files([path]):
        try:
            header = dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        by_series[uid].append(file)
        names[uid] = (
            f"{header.get('SeriesNumber', '')} {header.get('SeriesDescription', '')}".strip()
        )
    return [
        (names[uid] or uid, lambda files=files: load_dicom_series(files))
        for uid, files in sorted(by_series.items(), key=lambda item: names[item[0]])
    ]


def _reset(args: argparse.Namespace) -> int:
    from qc_service import control_chart
    from qc_service.app import chart_key
    from services.settings import Settings
    from services.state import StateError, make_state

    settings = Settings()
    try:  # Redis, or the embedded state file while `harmonet up` is stopped
        state = make_state(redis_url=settings.redis_url, prefix=settings.state_prefix,
                           path=settings.embedded_state_path)
    except StateError as exc:
        print(f"qc reset-baseline: {exc}", file=sys.stderr)
        return 1
    try:
        metrics = [args.metric] if args.metric else _known_metrics(state, args.site, args.scanner)
        for metric in metrics:
            key = chart_key(args.site, args.scanner, metric)
            raw = state.get(key)
            if raw is not None:
                fresh = control_chart.reset(control_chart.ChartState.from_json(raw.decode()))
                state.set(key, fresh.to_json().encode())
                print(f"baseline reset: {args.site}/{args.scanner}/{metric}")
    finally:
        state.close()
    return 0


def _known_metrics(state: Any, site: str, scanner: str) -> list[str]:
    from qc_service.metrics.phantom import ACR_METRICS, FBIRN_METRICS

    return [
        m
        for m in (*FBIRN_METRICS, *ACR_METRICS)
        if state.get(f"qc:chart:{site}:{scanner}:{m}") is not None
    ]
