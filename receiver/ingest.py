"""One instance in: validate, pseudonymise, store durably, track its study.

Used by the C-STORE handler and by `harmonet import`; knows nothing of the network.
A success status is returned only after the blob is fsynced and the study is
tracked in the state store; any failure of either answers OUT_OF_RESOURCES so
the scanner sends the instance again.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from receiver import status
from receiver.encode import encode_part10
from receiver.pseudonymise import Pseudonymiser
from receiver.stability import StudyTracker
from receiver.validation import Rejection, validate_instance
from services import metrics
from services.blobstore import BlobStoreError, FileBlobStore, PutResult
from services.config import HarmonetConfig, ScannerRef
from services.state import StateError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    status: int
    outcome: str  # stored | duplicate | quarantined | rejected | unavailable
    key: str | None = None
    message: str = ""


# Our Implementation Class UID (a UUID-derived 2.25 root) and version name, PS3.7 D.3.3.2.
IMPLEMENTATION_CLASS_UID = UID("2.25.292434003098451799718456822426405681878")
IMPLEMENTATION_VERSION_NAME = "HARMONET_1"


def instance_key(site: str, ds: Dataset) -> str:
    return f"dicom/{site}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


@dataclass(frozen=True)
class Ingestor:
    config: HarmonetConfig
    blobs: FileBlobStore
    tracker: StudyTracker
    pseudonymiser: Pseudonymiser

    def ingest(
        self,
        ds: Dataset,
        *,
        scanner: ScannerRef,
        context_sop_class: str,
        affected_sop_instance: str | None = None,
    ) -> IngestResult:
        started = time.perf_counter()
        try:
            prepared = self._prepare(ds, context_sop_class, affected_sop_instance)
        except Exception as exc:  # a malformed dataset must never take the receiver down
            log.warning("undecodable instance", extra={"error": type(exc).__name__})
            prepared = Rejection(status.CANNOT_UNDERSTAND, "undecodable", "cannot decode dataset")
        if isinstance(prepared, Rejection):
            metrics.RECEIVER_REJECTED.labels(reason=prepared.reason).inc()
            return IngestResult(prepared.status, "rejected", message=prepared.message)
        encoded, is_phantom = prepared
        try:
            result = self._store(ds, encoded, scanner=scanner, is_phantom=is_phantom)
        except (BlobStoreError, StateError) as exc:
            log.error("storage unavailable", extra={"error": str(exc)})
            metrics.RECEIVER_REJECTED.labels(reason="storage_unavailable").inc()
            if isinstance(exc, BlobStoreError):
                _storage_readiness.failed(exc)
            return IngestResult(status.OUT_OF_RESOURCES, "unavailable", message=str(exc))
        if result.outcome != "duplicate":  # a duplicate wrote nothing: proves no space
            _storage_readiness.stored()
        metrics.STAGE_DURATION.labels(stage="receiver_store").observe(
            time.perf_counter() - started
        )
        return result

    def _prepare(
        self, ds: Dataset, context_sop_class: str, affected_sop_instance: str | None
    ) -> tuple[bytes, bool] | Rejection:
        rejection = validate_instance(
            ds, context_sop_class=context_sop_class, affected_sop_instance=affected_sop_instance
        )
        if rejection is not None:
            return rejection
        is_phantom = self.config.is_phantom_name(str(ds.get("PatientName", "") or ""))
        self.pseudonymiser.apply(ds)
        return encode_part10(ds, _normalised_file_meta(ds)), is_phantom

    def _store(
        self, ds: Dataset, encoded: bytes, *, scanner: ScannerRef, is_phantom: bool
    ) -> IngestResult:
        site, scanner_id = scanner.site, scanner.scanner.id
        key = instance_key(site, ds)
        put = self.blobs.put_new(key, encoded)
        if put is PutResult.CONFLICT:
            quarantined = self.blobs.put_unique(
                f"quarantine/{site}/{ds.StudyInstanceUID}/{ds.SOPInstanceUID}", encoded,
                suffix=".dcm",
            )
            metrics.RECEIVER_QUARANTINED.labels(site=site, scanner=scanner_id).inc()
            log.warning(
                "instance differs from the stored one under the same SOP Instance UID",
                extra={"key": key, "quarantine_key": quarantined},
            )
            return IngestResult(status.SUCCESS, "quarantined", key=quarantined)
        self.tracker.touch(
            study_uid=str(ds.StudyInstanceUID),
            site=site,
            scanner=scanner_id,
            subject_id=str(ds.PatientID),
            is_phantom=is_phantom,
        )
        if put is PutResult.DUPLICATE:
            metrics.RECEIVER_DUPLICATES.labels(site=site, scanner=scanner_id).inc()
            return IngestResult(status.SUCCESS, "duplicate", key=key)
        metrics.RECEIVER_INSTANCES_STORED.labels(site=site, scanner=scanner_id).inc()
        metrics.RECEIVER_BYTES_STORED.labels(site=site, scanner=scanner_id).inc(len(encoded))
        return IngestResult(status.SUCCESS, "stored", key=key)


class _StorageReadiness:
    """`/readyz` fails while the blob store refuses writes (disk full, read-only, I/O
    error) and recovers with the next instance stored; the flag spares the hot path a
    lock per instance."""

    COMPONENT = "receiver_storage"

    def __init__(self) -> None:
        self._failing = False

    def failed(self, exc: BlobStoreError) -> None:
        self._failing = True
        cause = exc.__cause__
        code = getattr(cause, "errno", None) if cause is not None else None
        reason = errno.errorcode.get(code or 0, "EIO")
        metrics.set_ready(self.COMPONENT, False, f"blob store refuses writes ({reason})")

    def stored(self) -> None:
        if self._failing:
            self._failing = False
            metrics.set_ready(self.COMPONENT, True)


_storage_readiness = _StorageReadiness()


def _normalised_file_meta(ds: Dataset) -> FileMetaDataset:
    """File meta that depends only on the instance, not on who sent it or how (storescu,
    a console, `harmonet import`), so a re-sent instance is recognised as a duplicate."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta
