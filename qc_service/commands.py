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
    run.add_argument("--type", default="t1w", help="series type: t1w, t2w, flair, bold, fbirn, acr")
    run.add_argument("--phantom", action="store_true", help="measure as a phantom series")
    run.set_defaults(handler=_run)
    reset = actions.add_parser("reset-baseline", help="start a new stability baseline")
    reset.add_argument("--site", required=True)
    reset.add_argument("--scanner", required=True)
    reset.add_argument("--metric", help="one metric (default: every metric of the scanner)")
    reset.set_defaults(handler=_reset)


def _run(args: argparse.Namespace) -> int:
    from qc_service.measure import measure_paths, measure_volume
    from services.scu import iter_files
    from services.volume import VolumeError, load_nifti

    is_phantom = args.phantom or args.type in ("fbirn", "acr")
    if args.path.suffix in (".nii", ".gz"):
        try:
            volume = load_nifti(args.path)
        except VolumeError as exc:
            print(f"cannot read {args.path}: {exc.reason}", file=sys.stderr)
            return 1
        result = measure_volume(volume, series_type=args.type, is_phantom=is_phantom)
    else:
        result = measure_paths(
            list(iter_files([args.path])), series_type=args.type, is_phantom=is_phantom
        )
    print(
        json.dumps(
            {
                "kind": result.kind,
                "reason": result.reason,
                "metrics": result.metrics,
                "features": result.features,
            },
            indent=2,
            sort_keys=True,
        )
    )
    return 0 if result.measured else 1


def _reset(args: argparse.Namespace) -> int:
    from qc_service import control_chart
    from qc_service.app import chart_key
    from services.settings import Settings
    from services.state import make_state

    settings = Settings()
    if settings.redis_url is None:
        print("reset-baseline needs HARMONET_REDIS_URL (the charts live in Redis)", file=sys.stderr)
        return 2
    state = make_state(redis_url=settings.redis_url, prefix=settings.state_prefix)
    metrics = [args.metric] if args.metric else _known_metrics(state, args.site, args.scanner)
    for metric in metrics:
        key = chart_key(args.site, args.scanner, metric)
        raw = state.get(key)
        if raw is not None:
            fresh = control_chart.reset(control_chart.ChartState.from_json(raw.decode()))
            state.set(key, fresh.to_json().encode())
            print(f"baseline reset: {args.site}/{args.scanner}/{metric}")
    state.close()
    return 0


def _known_metrics(state: Any, site: str, scanner: str) -> list[str]:
    from qc_service.metrics.phantom import ACR_METRICS, FBIRN_METRICS

    return [
        m
        for m in (*FBIRN_METRICS, *ACR_METRICS)
        if state.get(f"qc:chart:{site}:{scanner}:{m}") is not None
    ]
