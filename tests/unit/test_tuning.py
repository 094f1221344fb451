"""receiver.tuning: pynetdicom still speaks DICOM correctly with the patches applied
(echo, store, release, abort, rejection, timers), the command-set encoder matches
pydicom byte for byte, and SO_REUSEPORT lets two servers share a port."""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.transport import ThreadedAssociationServer

from receiver import tuning
from services.synthetic import iter_instances, small_study

MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
WAIT_S = 10.0


@pytest.fixture(autouse=True, scope="module")
def patched() -> Iterator[None]:
    tuning.apply_low_latency_patches()
    yield
    tuning.remove_low_latency_patches()


@pytest.fixture
def received() -> list[Dataset]:
    return []


def _scp_ae(**timeouts: float) -> AE:
    ae = AE(ae_title="TUNED")
    ae.add_supported_context(MR)
    ae.add_supported_context(VERIFICATION)
    for name, value in timeouts.items():
        setattr(ae, name, value)
    return ae


def _start(ae: AE, handlers: list[Any] | None = None) -> ThreadedAssociationServer:
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None
    return server


def _scu() -> AE:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MR)
    ae.add_requested_context(VERIFICATION)
    return ae


@pytest.fixture
def server(received: list[Dataset]) -> Iterator[tuple[ThreadedAssociationServer, dict[str, Any]]]:
    seen: dict[str, Any] = {"aborted": threading.Event(), "released": threading.Event()}

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    def on_echo(event: Any) -> int:
        if str(event.assoc.requestor.ae_title).strip() == "ABORTME":
            event.assoc.abort()
        return 0x0000

    handlers = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_ABORTED, lambda event: seen["aborted"].set()),
        (evt.EVT_RELEASED, lambda event: seen["released"].set()),
    ]
    scp = _start(_scp_ae(), handlers)
    try:
        yield scp, seen
    finally:
        scp.shutdown()


def _port(scp: ThreadedAssociationServer) -> int:
    return int(scp.server_address[1])


def test_patches_apply_on_the_pinned_pynetdicom() -> None:
    if pynetdicom.__version__ != "3.0.4":
        pytest.skip(f"patches pinned to 3.0.4, this is {pynetdicom.__version__}")
    assert tuning.low_latency_patches_applied()
    assert pynetdicom.dul.DULServiceProvider.run_reactor is tuning._dul_run_reactor


def test_apply_is_idempotent_and_remove_restores() -> None:
    tuning.apply_low_latency_patches()
    patched_reactor = pynetdicom.association.Association._run_reactor
    tuning.remove_low_latency_patches()
    try:
        assert pynetdicom.association.Association._run_reactor is not patched_reactor
        assert vars(pynetdicom.dimse_messages)["encode"] is encode
    finally:
        tuning.apply_low_latency_patches()
    assert pynetdicom.association.Association._run_reactor is patched_reactor


def test_changed_internals_leave_pynetdicom_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tuning.remove_low_latency_patches()
    key = (pynetdicom.dul.DULServiceProvider, "run_reactor")
    monkeypatch.setitem(tuning._PINNED_SOURCES, key, "0" * 16)
    try:
        with caplog.at_level(logging.INFO, logger="receiver.tuning"):
            tuning.apply_low_latency_patches()
        assert not tuning.low_latency_patches_applied()
        assert "not applied" in caplog.text
        assert pynetdicom.dul.DULServiceProvider.run_reactor is not tuning._dul_run_reactor
    finally:
        monkeypatch.undo()
        tuning.apply_low_latency_patches()


def test_echo_store_release(server: tuple[ThreadedAssociationServer, dict[str, Any]],
                            received: list[Dataset]) -> None:
    scp, seen = server
    instances = list(iter_instances(small_study("tuning", t1_slices=2, epi_slices=2,
                                                epi_volumes=1)))
    assoc = _scu().associate("127.0.0.1", _port(scp), ae_title="TUNED")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    for ds in instances:
        assert assoc.send_c_store(ds).Status == 0x0000
    started = time.monotonic()
    assoc.release()
    assert assoc.is_released
    assert time.monotonic() - started < 1.0
    assert seen["released"].wait(WAIT_S)
    assert [d.SOPInstanceUID for d in received] == [d.SOPInstanceUID for d in instances]
    assert [d.PixelData for d in received] == [d.PixelData for d in instances]


def test_abort_by_the_requestor(server: tuple[ThreadedAssociationServer, dict[str, Any]]) -> None:
    scp, seen = server
    assoc = _scu().associate("127.0.0.1", _port(scp), ae_title="TUNED")
    assert assoc.send_c_echo().Status == 0x0000
    assoc.abort()
    assert assoc.is_aborted
    assert seen["aborted"].wait(WAIT_S)


def test_abort_by_the_acceptor(server: tuple[ThreadedAssociationServer, dict[str, Any]]) -> None:
    scp, _ = server
    scu = AE(ae_title="ABORTME")
    scu.add_requested_context(VERIFICATION)
    assoc = scu.associate("127.0.0.1", _port(scp), ae_title="TUNED")
    assoc.send_c_echo()
    deadline = time.monotonic() + WAIT_S
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted


def test_rejection_from_evt_requested() -> None:
    def reject(event: Any) -> None:
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)

    scp = _start(_scp_ae(), [(evt.EVT_REQUESTED, reject)])
    try:
        assoc = _scu().associate("127.0.0.1", _port(scp), ae_title="TUNED")
        assert assoc.is_rejected
        rejection = assoc.acceptor.primitive
        assert rejection is not None
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)
    finally:
        scp.shutdown()


def test_network_timeout_still_fires() -> None:
    scp = _start(_scp_ae(network_timeout=0.3))
    try:
        assoc = _scu().associate("127.0.0.1", _port(scp), ae_title="TUNED")
        assert assoc.is_established
        deadline = time.monotonic() + WAIT_S
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.02)
        assert assoc.is_aborted
    finally:
        scp.shutdown()


def test_acse_timeout_closes_a_silent_connection() -> None:
    scp = _start(_scp_ae(acse_timeout=0.3))
    try:
        with socket.create_connection(("127.0.0.1", _port(scp)), timeout=WAIT_S) as raw:
            started = time.monotonic()
            assert raw.recv(1) == b""  # closed by the acceptor, no A-ASSOCIATE-RQ ever sent
            assert time.monotonic() - started < 5.0
    finally:
        scp.shutdown()


def test_an_idle_association_does_not_spin(
    server: tuple[ThreadedAssociationServer, dict[str, Any]],
) -> None:
    scp, _ = server
    assoc = _scu().associate("127.0.0.1", _port(scp), ae_title="TUNED")
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        # 4 reactor threads (both ends) waking every 10 ms cost a few percent of a core
        assert cpu < 0.5
    finally:
        assoc.release()


def _store_rq() -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = MR
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.123"
    primitive.Priority = 2
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.MoveOriginatorMessageID = 3
    primitive.DataSet = None
    return primitive


def _store_rsp(status: int) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 12
    primitive.AffectedSOPClassUID = MR
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1234"
    primitive.Status = status
    return primitive


def _echo_rsp() -> C_ECHO:
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = VERIFICATION
    primitive.Status = 0
    return primitive


def _find_rq() -> C_FIND:
    primitive = C_FIND()
    primitive.MessageID = 5
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    primitive.Priority = 0
    return primitive


@pytest.mark.parametrize(("message", "primitive"), [
    (C_STORE_RQ, _store_rq()),
    (C_STORE_RSP, _store_rsp(0x0000)),
    (C_STORE_RSP, _store_rsp(0xA700)),
    (C_ECHO_RSP, _echo_rsp()),
    (C_FIND_RQ, _find_rq()),
])
def test_command_set_encoding_matches_pydicom(message: Any, primitive: Any) -> None:
    msg = message()
    msg.primitive_to_message(primitive)
    assert tuning.encode_command_set(msg.command_set) == encode(msg.command_set, True, True)


def test_command_set_encoder_declines_what_it_does_not_cover() -> None:
    msg = C_STORE_RSP()
    primitive: Any = _store_rsp(0xC000)
    primitive.ErrorComment = "cannot store"  # LO: left to pydicom
    msg.primitive_to_message(primitive)
    assert tuning.encode_command_set(msg.command_set) is None
    data_set = Dataset()
    data_set.PatientID = "X"  # not group 0000
    assert tuning.encode_command_set(data_set) is None


def test_two_reuseport_servers_share_a_port() -> None:
    first_ae, second_ae = _scp_ae(), _scp_ae()
    first = tuning.start_reuseport_server(first_ae, ("127.0.0.1", 0))
    try:
        port = _port(first)
        second = tuning.start_reuseport_server(second_ae, ("127.0.0.1", port))
        try:
            assert _port(second) == port
            with pytest.raises(OSError):  # without SO_REUSEPORT the port is taken
                AE().make_server(("127.0.0.1", port), contexts=first_ae.supported_contexts)
            for _ in range(4):
                assoc = _scu().associate("127.0.0.1", port, ae_title="TUNED")
                assert assoc.send_c_echo().Status == 0x0000
                assoc.release()
        finally:
            second.shutdown()
    finally:
        first.shutdown()
