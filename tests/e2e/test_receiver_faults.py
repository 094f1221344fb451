"""The receiver refuses what it must and keeps serving: AE/host allow-list, bad
instances, a full disk, TLS."""

from __future__ import annotations

import copy
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from receiver import status
from services.synthetic import iter_instances, small_study, write_study
from tests.support.processes import (
    HarmonetProcess,
    require_tool,
    run_harmonet,
    storescu,
)

pytestmark = pytest.mark.e2e
MR = "1.2.840.10008.5.1.4.1.1.4"

CONFIG = """\
study: TEST
sites:
  - id: milan
    scanners:
      - id: milan-prisma
        ae_titles: [MILANPRISMA]
        hosts: [127.0.0.0/8]
  - id: rome
    scanners:
      - id: rome-skyra
        ae_titles: [ROMESKYRA]
        hosts: [10.9.0.0/16]
"""


@pytest.fixture
def config_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "harmonet.yaml"
    path.write_text(CONFIG)
    return {"HARMONET_CONFIG": str(path)}


def _associate(port: int, calling: str, *, tls: ssl.SSLContext | None = None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(MR)
    return ae.associate(
        "127.0.0.1", port, ae_title="HARMONET", tls_args=(tls, None) if tls else None
    )


def _store(port: int, datasets: list[Dataset], calling: str = "MILANPRISMA") -> list[int]:
    assoc = _associate(port, calling)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_unknown_ae_and_wrong_host_are_rejected(tmp_path: Path, config_env: dict[str, str]) -> None:
    require_tool("storescu")
    files = tmp_path / "study"
    write_study(small_study("faults-ae", t1_slices=2, epi_slices=1, epi_volumes=1), files)
    with run_harmonet("up", tmp_path / "data", env=config_env) as harmonet:
        unknown = storescu(harmonet.dicom_port, files, calling_ae="NOTASCANNER")
        assert unknown.returncode != 0
        assert "reject" in unknown.stderr.lower(), unknown.stderr
        wrong_host = _associate(harmonet.dicom_port, "ROMESKYRA")  # known AE, not from 10.9/16
        assert wrong_host.is_rejected
        assert not list((harmonet.data_dir).rglob("*.dcm"))
        assert (
            harmonet.wait_metric("harmonet_receiver_rejected_total", 1, reason="unknown_ae_title")
            == 1
        )
        assert (
            harmonet.wait_metric("harmonet_receiver_rejected_total", 1, reason="host_not_allowed")
            == 1
        )
        associations = "harmonet_receiver_associations_total"
        rejected = harmonet.wait_metric(associations, 2, result="rejected")
        assert rejected == 2
        # The allowed scanner still gets through, C-ECHO included.
        echo = subprocess.run(
            [
                require_tool("echoscu"),
                "-aet",
                "MILANPRISMA",
                "-aec",
                "HARMONET",
                "127.0.0.1",
                str(harmonet.dicom_port),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert echo.returncode == 0, echo.stderr
        assert storescu(harmonet.dicom_port, files, calling_ae="MILANPRISMA").returncode == 0
        assert len(list(harmonet.data_dir.rglob("*.dcm"))) == 3


def _bad_instances() -> list[tuple[str, Dataset, int]]:
    good = list(iter_instances(small_study("faults-bad", t1_slices=4, epi_slices=1, epi_volumes=1)))
    truncated = copy.deepcopy(good[0])
    truncated.PixelData = truncated.PixelData[:-1000]
    no_series = copy.deepcopy(good[1])
    del no_series.SeriesInstanceUID
    bad_uid = copy.deepcopy(good[2])
    with warnings.catch_warnings():  # pydicom warns about the invalid UI value we want to send
        warnings.simplefilter("ignore")
        bad_uid.StudyInstanceUID = "1.2.x.3"
    return [
        ("truncated pixel data", truncated, status.CANNOT_UNDERSTAND),
        ("missing SeriesInstanceUID", no_series, status.CANNOT_UNDERSTAND),
        ("invalid StudyInstanceUID", bad_uid, status.CANNOT_UNDERSTAND),
    ]


def test_bad_instances_get_failure_statuses_and_the_receiver_keeps_serving(
    tmp_path: Path, config_env: dict[str, str]
) -> None:
    good = list(
        iter_instances(small_study("faults-good", t1_slices=3, epi_slices=1, epi_volumes=1))
    )
    with run_harmonet("up", tmp_path / "data", env=config_env) as harmonet:
        bad = _bad_instances()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            statuses = _store(harmonet.dicom_port, [ds for _, ds, _ in bad] + good[:2])
        assert statuses[: len(bad)] == [expected for _, _, expected in bad]
        assert statuses[len(bad) :] == [status.SUCCESS, status.SUCCESS]  # same association goes on
        # A truncated P-DATA stream: the peer aborts mid-instance; others are unaffected.
        _abort_mid_store(harmonet)
        assert _store(harmonet.dicom_port, good[2:]) == [status.SUCCESS] * len(good[2:])
        assert len(list(harmonet.data_dir.rglob("*.dcm"))) == len(good)
        assert (
            harmonet.wait_metric(
                "harmonet_receiver_rejected_total", 1, reason="truncated_pixel_data"
            )
            == 1
        )
        assert harmonet.proc.poll() is None


def _abort_mid_store(harmonet: HarmonetProcess) -> None:
    assoc = _associate(harmonet.dicom_port, "MILANPRISMA")
    assert assoc.is_established
    assoc.abort()


def test_full_disk_answers_out_of_resources(
    tmp_path: Path, tiny_disk: Path, config_env: dict[str, str]
) -> None:
    spec = small_study("faults-disk", t1_slices=40, epi_slices=1, epi_volumes=1)
    instances = list(iter_instances(spec))
    # the registry's database elsewhere: this 128 KiB volume is for the receiver's blobs
    env = {**config_env, "HARMONET_DATABASE_URL": f"sqlite:///{tmp_path}/registry.sqlite3"}
    with run_harmonet("up", tiny_disk / "data", env=env) as harmonet:
        statuses = _store(harmonet.dicom_port, instances)
        assert statuses[0] == status.SUCCESS
        assert status.OUT_OF_RESOURCES in statuses
        first_failure = statuses.index(status.OUT_OF_RESOURCES)
        assert set(statuses[first_failure:]) == {status.OUT_OF_RESOURCES}
        stored = list((harmonet.data_dir / "dicom").rglob("*.dcm"))
        assert len(stored) == first_failure  # every success is on disk, nothing else
        assert not list(harmonet.data_dir.rglob(".tmp-*"))
        assert (
            harmonet.metric_value("harmonet_receiver_rejected_total", reason="storage_unavailable")
            >= 1
        )
        assert harmonet.proc.poll() is None


def test_tls_only_with_trusted_client_certificate(
    tmp_path: Path, config_env: dict[str, str]
) -> None:
    certs = _make_certificates(tmp_path / "pki")
    env = {
        **config_env,
        "HARMONET_TLS_CERT": str(certs / "server.pem"),
        "HARMONET_TLS_KEY": str(certs / "server.key"),
        "HARMONET_TLS_CA": str(certs / "ca.pem"),
    }
    instance = next(
        iter_instances(small_study("faults-tls", t1_slices=1, epi_slices=1, epi_volumes=1))
    )
    with run_harmonet("up", tmp_path / "data", env=env) as harmonet:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.pem"))
        client.check_hostname = False
        client.load_cert_chain(certs / "client.pem", certs / "client.key")
        assoc = _associate(harmonet.dicom_port, "MILANPRISMA", tls=client)
        assert assoc.is_established
        assert int(assoc.send_c_store(instance).Status) == status.SUCCESS
        assoc.release()
        assert not _establishes(harmonet.dicom_port, "MILANPRISMA")
        anonymous = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.pem")
        )
        anonymous.check_hostname = False
        assert not _establishes(harmonet.dicom_port, "MILANPRISMA", tls=anonymous)


def _establishes(port: int, calling: str, *, tls: ssl.SSLContext | None = None) -> bool:
    """Whether an association is established; pynetdicom's requestor leaves the socket of
    a failed TLS association open, so close it here rather than leak it into later tests."""
    assoc = _associate(port, calling, tls=tls)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.close()
    return established


def _make_certificates(directory: Path) -> Path:
    openssl = "openssl"
    directory.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            f"{name}.pem",
        )
    return directory


def test_undecodable_bytes_get_a_failure_status(tmp_path: Path, config_env: dict[str, str]) -> None:
    from pynetdicom import _config

    files = write_study(
        small_study("faults-raw", t1_slices=3, epi_slices=1, epi_volumes=1), tmp_path / "study"
    )
    raw = files[0].read_bytes()
    cut_header = tmp_path / "cut.dcm"
    cut_header.write_bytes(raw[:700])  # ends inside the data set's header elements
    garbage = tmp_path / "garbage.dcm"
    meta_end = raw.index(b"\x08\x00\x05\x00")  # first data set element after the file meta
    garbage.write_bytes(raw[:meta_end] + bytes(range(256)) * 8)
    with run_harmonet("up", tmp_path / "data", env=config_env) as harmonet:
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file bytes as they are
        try:
            assoc = _associate(harmonet.dicom_port, "MILANPRISMA")
            statuses = [int(assoc.send_c_store(p).Status) for p in (cut_header, garbage, files[1])]
            assoc.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        assert statuses[0] in (status.CANNOT_UNDERSTAND, status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
        assert statuses[1] in (status.CANNOT_UNDERSTAND, status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
        assert statuses[2] == status.SUCCESS
        assert len(list(harmonet.data_dir.rglob("*.dcm"))) == 1
        assert harmonet.proc.poll() is None
