"""TLS on the DICOM port: with TLS required, a plain association and TLS 1.0 / 1.1
handshakes fail; TLS 1.2 and 1.3 with a certificate from the trusted CA succeed (C-ECHO
and C-STORE); a certificate from another CA fails."""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE

from receiver import status
from services.synthetic import iter_instances, small_study
from tests.faults.kill_scenario import ENV
from tests.support.pki import make_certificates
from tests.support.processes import HarmonetProcess, run_harmonet

pytestmark = pytest.mark.e2e
MR = "1.2.840.10008.5.1.4.1.1.4"
VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
            "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def receiver(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarmonetProcess]:
    env = {**ENV, "HARMONET_TLS_CERT": str(pki / "server.pem"),
           "HARMONET_TLS_KEY": str(pki / "server.key"), "HARMONET_TLS_CA": str(pki / "ca.pem")}
    with run_harmonet("receiver", tmp_path_factory.mktemp("tls") / "data", env=env) as harmonet:
        yield harmonet


def _client(pki: Path, version: str, *, identity: str = "client") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki / "ca.pem")
    context.load_cert_chain(pki / f"{identity}.pem", pki / f"{identity}.key")
    with warnings.catch_warnings():  # the very thing under test is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = VERSIONS[version]
    if version in ("TLSv1", "TLSv1.1"):
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses to offer them otherwise
    return context


def _handshake(port: int, context: ssl.SSLContext) -> str:
    """The negotiated version, or why the handshake failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                return str(tls.version())
        except (ssl.SSLError, OSError) as error:
            return f"refused: {type(error).__name__}: {getattr(error, 'reason', '') or error}"


def _client_can_speak(version: str, pki: Path) -> bool:
    """Positive control: this OpenSSL build can complete a `version` handshake at all."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki / "server.pem", pki / "server.key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = server.maximum_version = VERSIONS[version]
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server.wrap_socket(connection, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass
        finally:
            connection.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        return _handshake(port, _client(pki, version)) == version
    finally:
        thread.join(timeout=10)
        listener.close()


def _associate(port: int, context: ssl.SSLContext | None) -> tuple[bool, str, int | None]:
    ae = AE(ae_title="MILANPRISMA")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(MR)
    assoc = ae.associate("127.0.0.1", port, ae_title="HARMONET",
                         tls_args=(context, None) if context else None)  # type: ignore[arg-type]
    if not assoc.is_established:
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.close()
        return False, "", None
    assert assoc.dul.socket is not None
    tls = assoc.dul.socket.socket
    version = str(tls.version()) if isinstance(tls, ssl.SSLSocket) else "plain"
    echo = int(assoc.send_c_echo().Status)
    instance = next(iter_instances(small_study("faults-tls", t1_slices=1, epi_slices=1,
                                               epi_volumes=1)))
    stored = int(assoc.send_c_store(instance).Status)
    assoc.release()
    return echo == status.SUCCESS, version, stored


def test_tls_refuses_plain_and_old_versions_and_accepts_12_and_13_with_the_right_cert(
    receiver: HarmonetProcess, pki: Path
) -> None:
    port = receiver.dicom_port
    rows = {}
    plain, _, _ = _associate(port, None)
    rows["plain association"] = "established" if plain else "refused"
    for version in ("TLSv1", "TLSv1.1"):
        speakable = _client_can_speak(version, pki)
        outcome = _handshake(port, _client(pki, version))
        rows[f"{version} handshake (client able: {speakable})"] = outcome
        assert outcome.startswith("refused"), (version, outcome)
    for version in ("TLSv1.2", "TLSv1.3"):
        echoed, negotiated, stored = _associate(port, _client(pki, version))
        rows[f"{version} association, trusted client cert"] = (
            f"established as {negotiated}, C-ECHO ok {echoed}, C-STORE 0x{stored or 0:04X}")
        assert echoed and negotiated == version and stored == status.SUCCESS
    # In TLS 1.3 the server's verdict on the client certificate arrives after the client's
    # side of the handshake, so judge by the association, not by `do_handshake`.
    established, _, _ = _associate(port, _client(pki, "TLSv1.3", identity="stranger"))
    rows["TLSv1.3 association, client cert from another CA"] = (
        "established" if established else "refused")
    for name, outcome in rows.items():
        print(f"  {name:48} -> {outcome}")
    print(f"TLS: plain refused {not plain}, TLS 1.0/1.1 refused 2/2, TLS 1.2/1.3 with the "
          f"trusted certificate accepted 2/2, foreign certificate refused {not established}")
    assert not plain and not established
