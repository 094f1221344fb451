"""`harmonet compliance check DIR --config FILE`: the protocol check offline, on a folder.

For sites before they join: the same fingerprint, classification and tolerances
as the service, printed as a table. Only argument parsing is imported eagerly.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def register(verbs: Any, service_parsers: dict[str, argparse.ArgumentParser]) -> None:
    actions = service_parsers["compliance"].add_subparsers(metavar="ACTION")
    check = actions.add_parser("check", help="check a folder of DICOM files against a protocol")
    check.add_argument("folder", type=Path)
    check.add_argument("--config", type=Path, required=True)
    check.add_argument("--site", help="site whose protocol and overrides apply (default: first)")
    check.add_argument("--scanner", help="scanner id for scanner overrides")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from compliance_service.check import check_study
    from compliance_service.fingerprint import series_fingerprint
    from services.config import ConfigError, load_config
    from services.scu import iter_files

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    site = args.site or config.sites[0].id
    scanner = args.scanner or next(s for x in config.sites if x.id == site for s in x.scanners).id
    by_series: dict[str, list[Any]] = defaultdict(list)
    for path in iter_files([args.folder]):
        try:
            header = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "SeriesInstanceUID" in header:
            by_series[str(header.SeriesInstanceUID)].append(header)
    if not by_series:
        print(f"no DICOM series under {args.folder}", file=sys.stderr)
        return 1
    fingerprints = {
        uid: series_fingerprint(_sample(headers), instance_count=len(headers))
        for uid, headers in by_series.items()
    }
    results = check_study(fingerprints, config.protocol_for_site(site), site=site, scanner=scanner)
    _print_table(results)
    return 0 if all(r.verdict == "compliant" for r in results) else 3


def _sample(headers: list[Any]) -> list[Any]:
    ordered = sorted(headers, key=lambda h: int(h.get("InstanceNumber") or 0))
    return [ordered[i] for i in sorted({0, len(ordered) // 2, len(ordered) - 1})]


def _print_table(results: list[Any]) -> None:
    rows = [("#", "description", "type", "verdict", "severity", "deviations")]
    for r in results:
        deviations = "; ".join(
            f"{d.parameter}: expected {d.expected}, got {d.actual}"
            + (f" (±{d.tolerance})" if d.tolerance is not None else "")
            for d in r.deviations
        )
        rows.append(
            (
                str(r.series_number or ""),
                r.series_description or "",
                r.series_type,
                r.verdict,
                r.severity or "",
                deviations or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[5]
        )
