"""The DICOM SCP: associations, the scanner allow-list, TLS, C-ECHO and C-STORE.

Handlers are bound with pynetdicom's `(evt.EVT_*, handler, [args])` form. An
association from a calling AE title that no configured scanner owns, or from a
host that scanner does not list, is rejected before negotiation.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from receiver import status
from receiver.ingest import Ingestor
from receiver.sop_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from receiver.tuning import apply_low_latency_patches, start_reuseport_server
from services import metrics
from services.config import HarmonetConfig, ScannerRef

log = logging.getLogger(__name__)
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class ScpOptions:
    ae_title: str
    host: str
    port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    reuse_port: bool = False


# The largest PDU the receiver takes, advertised as its Maximum Length Receive. pynetdicom
# reads a whole PDU into memory before decoding it, so with "no limit" (0) one connection,
# before its AE title is even checked, could make the receiver buffer the 4 GiB a PDU
# length field allows. 4 MiB still carries any 2D slice in one P-DATA PDU.
MAX_PDU_BYTES = 4 * 1024 * 1024


def make_ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.maximum_associations = 64
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 30
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    return ae


def tls_context(options: ScpOptions) -> ssl.SSLContext | None:
    if options.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.tls_cert, options.tls_key)
    if options.tls_ca is not None:
        context.load_verify_locations(options.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_scp(
    options: ScpOptions, *, config: HarmonetConfig, ingestor: Ingestor
) -> ThreadedAssociationServer:
    """Start serving in background threads; call `.shutdown()` on the result to stop."""
    apply_low_latency_patches()
    _harden_pdu_reads()
    ae = make_ae(options.ae_title)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, _on_requested, [config]),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_C_STORE, _on_store, [config, ingestor]),
    ]
    address, ssl_context = (options.host, options.port), tls_context(options)
    server: ThreadedAssociationServer
    if options.reuse_port:
        server = start_reuseport_server(ae, address, evt_handlers=handlers, ssl_context=ssl_context)
    else:
        started = ae.start_server(
            address, block=False, evt_handlers=handlers, ssl_context=ssl_context
        )
        assert started is not None  # non-blocking start always returns the server
        server = started
    log.info(
        "DICOM SCP listening",
        extra={
            "ae_title": options.ae_title,
            "port": server.server_address[1],
            "tls": bool(options.tls_cert),
        },
    )
    return server


def _harden_pdu_reads() -> None:
    """Two guards on how pynetdicom reads PDUs, installed once per process.

    * A PDU longer than MAX_PDU_BYTES is refused: the DUL reads the 6-byte header, then
      asks the socket for the declared length in one `recv`; an error there closes the
      connection (pynetdicom's "closed before the entire PDU was received", Evt17).
    * After an unknown or undecodable PDU (Evt19) the DUL would read on before it acts
      on the event, blocking in `recv` on whatever the peer sent next (garbage, an HTTP
      request) until the network timeout; we stop reading instead (EOF, Evt17), so the
      peer gets its A-ABORT and the connection closes at once. Plain TCP only: shutting
      down a TLS socket's read side would also end its TLS session.
    """
    if getattr(AssociationSocket.recv, "_harmonet_bounded", False):
        return
    unbounded_recv = AssociationSocket.recv
    read_pdu = DULServiceProvider._read_pdu_data

    def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PDU_BYTES:
            log.warning(
                "PDU longer than the limit; closing the connection",
                extra={"declared_bytes": nr_bytes, "limit_bytes": MAX_PDU_BYTES},
            )
            metrics.RECEIVER_REJECTED.labels(reason="pdu_too_large").inc()
            raise OSError(errno.EMSGSIZE, f"peer declared a {nr_bytes}-byte PDU")
        return unbounded_recv(self, nr_bytes)

    def read_pdu_data(self: DULServiceProvider) -> None:
        read_pdu(self)
        pending = self.event_queue.queue
        raw = getattr(self.socket, "socket", None)
        if pending and pending[-1] == "Evt19" and type(raw) is socket.socket:
            metrics.RECEIVER_REJECTED.labels(reason="invalid_pdu").inc()
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RD)

    recv._harmonet_bounded = True  # type: ignore[attr-defined]
    AssociationSocket.recv = recv  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign]


def _on_requested(event: Any, config: HarmonetConfig) -> None:
    requestor = event.assoc.requestor
    # The requestor's ae_title is only filled in during negotiation; read the request.
    calling = str(requestor.primitive.calling_ae_title).strip()
    scanner = config.scanner_for_ae(calling)
    reason = None
    if scanner is None:
        reason = "unknown_ae_title"
    elif not scanner.scanner.accepts_host(requestor.address):
        reason = "host_not_allowed"
    if reason is None:
        return
    log.warning(
        "association rejected",
        extra={
            "calling_ae": calling,
            "address": requestor.address,
            "reason": reason,
        },
    )
    metrics.RECEIVER_ASSOCIATIONS.labels(result="rejected").inc()
    metrics.RECEIVER_REJECTED.labels(reason=reason).inc()
    event.assoc.acse.send_reject(
        status.REJECT_PERMANENT,
        status.REJECT_SOURCE_SERVICE_USER,
        status.REJECT_CALLING_AE_NOT_RECOGNISED,
    )
    # As pynetdicom's own ACSE does after a rejection: wait until the A-ASSOCIATE-RJ
    # has left, otherwise the socket is closed first and the peer sees an abort.
    event.assoc.kill()


def _on_accepted(event: Any) -> None:
    metrics.RECEIVER_ASSOCIATIONS.labels(result="accepted").inc()


def _on_echo(event: Any) -> int:
    return status.SUCCESS


def _file_meta(transfer_syntax: str) -> FileMetaDataset:
    """Only what ingest reads: it writes its own normalised file meta (pynetdicom's
    `event.file_meta` builds five more elements per instance that nothing uses)."""
    meta = FileMetaDataset()
    meta[_TRANSFER_SYNTAX_UID] = DataElement(
        _TRANSFER_SYNTAX_UID, "UI", UID(transfer_syntax), validation_mode=config.IGNORE
    )
    return meta


_TRANSFER_SYNTAX_UID = BaseTag(0x00020010)


def _on_store(event: Any, config: HarmonetConfig, ingestor: Ingestor) -> int:
    calling = str(event.assoc.requestor.ae_title).strip()
    scanner: ScannerRef | None = config.scanner_for_ae(calling)
    if scanner is None:  # cannot happen after _on_requested; defensive
        return status.CANNOT_UNDERSTAND
    try:
        ds = event.dataset
        ds.file_meta = _file_meta(str(event.context.transfer_syntax))
    except Exception as exc:  # a PDU stream pynetdicom cannot decode into a dataset
        log.warning("undecodable C-STORE dataset", extra={"error": type(exc).__name__})
        metrics.RECEIVER_REJECTED.labels(reason="undecodable").inc()
        return status.CANNOT_UNDERSTAND
    result = ingestor.ingest(
        ds,
        scanner=scanner,
        context_sop_class=str(event.context.abstract_syntax),
        affected_sop_instance=str(event.request.AffectedSOPInstanceUID or "") or None,
    )
    if result.status != status.SUCCESS:
        log.warning(
            "instance refused",
            extra={
                "status": f"0x{result.status:04X}",
                "outcome": result.outcome,
                "detail": result.message,
                "calling_ae": calling,
            },
        )
    return result.status
