"""Request files for `harmonet up`: a command that cannot reach the embedded bus or state
(they live inside the `up` process) drops a JSON request in `<data dir>/<name>/requests/`;
a service of `harmonet up` carries it out and writes `<data dir>/<name>/done/<id>.json`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def spool(data_dir: Path, name: str) -> tuple[Path, Path]:
    """The requests and done folders of the spool `name`."""
    return data_dir / name / "requests", data_dir / name / "done"


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Readers see the whole file or none of it (temp file in the same folder, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
