"""Hostile input for the DICOM port: hand-built PDUs and malformed instances.

Each case sends one thing and reports what came back in the scanner's terms: a DIMSE
status, an A-ASSOCIATE-RJ (with its reason), an A-ABORT, or the connection closed.
Used by `test_bad_input.py` (and its fuzzing) against a running receiver.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import AE, _config

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.7433.1.8"


# --- PDUs ----------------------------------------------------------------------------


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def pdu(pdu_type: int, body: bytes, *, declared: int | None = None) -> bytes:
    length = len(body) if declared is None else declared
    return struct.pack(">BBL", pdu_type, 0, length) + body


def associate_rq(calling: bytes, called: bytes = b"HARMONET", *, abstract: str = MR) -> bytes:
    context = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode())
                    + _item(0x40, EXPLICIT_LE.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, IMPLEMENTATION_UID))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT) + context + user)
    return pdu(0x01, body)


RESPONSES = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x07: "A-ABORT"}


def read_response(sock: socket.socket, *, timeout: float = 10) -> str:
    """The next PDU's name (A-ASSOCIATE-RJ with result/source/reason), or `closed`."""
    sock.settimeout(timeout)
    header = b""
    try:
        while len(header) < 6:
            chunk = sock.recv(6 - len(header))
            if not chunk:
                return "closed"
            header += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    except TimeoutError:
        return "no answer"
    pdu_type, _, length = struct.unpack(">BBL", header)
    body = b""
    with contextlib.suppress(OSError):
        while len(body) < min(length, 65536):
            chunk = sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
    name = RESPONSES.get(pdu_type, f"PDU 0x{pdu_type:02X}")
    if pdu_type == 0x03 and len(body) >= 4:
        name += f" (result {body[1]}, source {body[2]}, reason {body[3]})"
    return name


def exchange(port: int, *payloads: bytes, timeout: float = 10,
             half_close: bool = False) -> list[str]:
    """Send each payload in turn on one connection; the answer to each. `half_close`:
    the peer says it has nothing more to send after the last payload (as a fuzzer whose
    PDU declares more than it carries must, or the receiver waits for the rest)."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for number, payload in enumerate(payloads, start=1):
            try:
                sock.sendall(payload)
                if half_close and number == len(payloads):
                    sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                answers.append("closed")
                break
            answer = read_response(sock, timeout=timeout)
            answers.append(answer)
            if answer in ("closed", "A-ABORT") or answer.startswith("A-ASSOCIATE-RJ"):
                break
    return answers


def send_huge_declared_pdu(
    port: int, *, pdu_type: int, send_bytes: int, while_open: Callable[[], None] = lambda: None
) -> tuple[int, str]:
    """A PDU declaring ~4 GiB, followed by up to `send_bytes` of zeros; `while_open` runs
    before the connection closes (to measure the receiver). Returns how much the receiver
    took before it stopped reading, and how the connection ended."""
    sent = 0
    chunk = bytes(1 << 16)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(pdu(pdu_type, b"", declared=0xFFFFFFF0))
        try:
            while sent < send_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            while_open()
            return sent, "closed by the receiver"
        while_open()
        sock.shutdown(socket.SHUT_WR)
        return sent, read_response(sock)


# --- instances -----------------------------------------------------------------------


def store_statuses(port: int, items: list[Dataset | Path], *, calling: str = "MILANPRISMA",
                   contexts: tuple[str, ...] = (MR,)) -> list[int | str]:
    """C-STORE each item on one association (a Path is sent byte for byte)."""
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context, [EXPLICIT_LE])
    assoc = ae.associate("127.0.0.1", port, ae_title="HARMONET")
    assert assoc.is_established
    results: list[int | str] = []
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for item in items:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    answer = assoc.send_c_store(item)
            except ValueError as error:  # no accepted presentation context for it
                results.append(f"not sent: {error}")
                continue
            results.append(int(answer.Status) if "Status" in answer else "no response")
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        if assoc.is_alive():
            assoc.abort()
    return results


def write_raw(path: Path, ds: Dataset, mutate: Callable[[bytes], bytes]) -> Path:
    """`ds` as a Part 10 file in explicit VR little endian, its data set bytes mutated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = copy.deepcopy(ds)
        ds.file_meta = _meta(ds)
        dcmwrite(path, ds, enforce_file_format=True)
    raw = path.read_bytes()
    start = 132 + 12 + struct.unpack("<I", raw[140:144])[0]  # after the file meta group
    path.write_bytes(raw[:start] + mutate(raw[start:]))
    return path


def _meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    return meta


def deep_sequence(depth: int) -> bytes:
    """(0040,0275) Request Attributes Sequence nested `depth` times, undefined lengths."""
    opening = (struct.pack("<HH", 0x0040, 0x0275) + b"SQ\0\0" + b"\xff\xff\xff\xff"
               + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF))
    closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
