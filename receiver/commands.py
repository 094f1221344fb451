"""CLI verbs the receiver adds to `harmonet` (entry-point group `harmonet.commands`).

Only argument parsing lives here, so `harmonet --help` stays fast; the work is
imported when the verb runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(verbs: Any, service_parsers: dict[str, argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser("import", help="bring an archive in through the same path as a push")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--aet", required=True, help="the scanner's calling AE title in the config")
    parser.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    from receiver.importer import import_paths
    from services.cli import settings_and_config
    from services.config import ConfigError

    try:
        settings, config = settings_and_config()
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    return import_paths(args.paths, calling_ae=args.aet, settings=settings, config=config)
