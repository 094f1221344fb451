"""A C-STORE SCU that pushes DICOM files the way a scanner does (`harmonet send`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from tqdm import tqdm

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1..255


@dataclass(frozen=True)
class SendResult:
    total: int
    succeeded: int
    failed: int
    skipped: int
    statuses: dict[int, int]


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _scan(paths: Iterable[Path]) -> tuple[list[tuple[Path, str, str]], int]:
    found, skipped = [], 0
    for path in iter_files(paths):
        try:
            header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            found.append((path, str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError):
            skipped += 1
    return found, skipped


def send_files(
    paths: Iterable[Path], *, host: str, port: int, calling_ae: str, called_ae: str,
    progress: bool | None = None,
) -> SendResult:
    files, skipped = _scan(paths)
    contexts = sorted({(sop, ts) for _, sop, ts in files})
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} SOP class/transfer syntax pairs; at most {MAX_CONTEXTS}")
    statuses: dict[int, int] = {}
    succeeded = failed = 0
    if not files:
        return SendResult(0, 0, 0, skipped, statuses)
    ae = AE(ae_title=calling_ae)
    for sop, ts in contexts:
        ae.add_requested_context(sop, ts)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_ae}@{host}:{port} not established")
    show = sys.stderr.isatty() if progress is None else progress
    try:
        for path, _, _ in tqdm(files, unit="inst", disable=not show, desc="C-STORE"):
            response = assoc.send_c_store(path)
            code = int(getattr(response, "Status", -1)) if response else -1
            statuses[code] = statuses.get(code, 0) + 1
            if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
                succeeded += 1
            else:
                failed += 1
                log.warning("C-STORE failed", extra={"file": str(path), "status": hex(code)})
    finally:
        assoc.release()
    return SendResult(len(files), succeeded, failed, skipped, statuses)
