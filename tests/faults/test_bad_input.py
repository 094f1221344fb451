"""Hostile input on the DICOM port: every case gets a clear rejection, the receiver's
memory stays bounded and a good push running at the same time succeeds; plus bounded
fuzzing of PDUs (over the network) and of data sets (through the ingest path)."""

from __future__ import annotations

import copy
import io
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode

from receiver import status
from receiver.ingest import Ingestor
from receiver.pseudonymise import Pseudonymiser
from receiver.stability import StudyTracker
from services.blobstore import FileBlobStore
from services.config import load_config
from services.state import InMemoryStateStore
from services.synthetic import iter_instances, small_study, write_study
from tests.faults.corpus import (
    CT,
    MR,
    associate_rq,
    deep_sequence,
    exchange,
    pdu,
    send_huge_declared_pdu,
    store_statuses,
    vm_rss_kib,
    write_raw,
)
from tests.faults.kill_scenario import ENV, storescu_command
from tests.support.processes import HarmonetProcess, require_tool, run_harmonet

pytestmark = pytest.mark.e2e
RSS_BOUND_KIB = 32 * 1024
REFUSED = (status.CANNOT_UNDERSTAND, status.DATASET_DOES_NOT_MATCH_SOP_CLASS)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarmonetProcess]:
    with run_harmonet("receiver", tmp_path_factory.mktemp("bad-input") / "data",
                      env=ENV) as harmonet:
        yield harmonet


def _instances() -> list[Dataset]:
    return list(iter_instances(small_study("faults-corpus", t1_slices=4, epi_slices=1,
                                           epi_volumes=1)))


def _instance_cases(tmp: Path) -> list[tuple[str, Dataset | Path, tuple[int, ...]]]:
    good = _instances()
    relabelled = copy.deepcopy(good[0])
    relabelled.Modality = "CT"
    long_uid, no_uids = copy.deepcopy(good[1]), copy.deepcopy(good[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        long_uid.SeriesInstanceUID = "1.2." + "3" * 70  # 74 characters, UI allows 64
    del no_uids.StudyInstanceUID, no_uids.SeriesInstanceUID
    pixel_tag = b"\xe0\x7f\x10\x00"

    def huge_pixel_length(data: bytes) -> bytes:
        return data[: data.index(pixel_tag)] + pixel_tag + b"OW\0\0\xf0\xff\xff\xff" + bytes(1000)

    def deep(data: bytes) -> bytes:
        at = data.index(pixel_tag)
        return data[:at] + deep_sequence(5000) + data[at:]

    return [
        ("truncated file", write_raw(tmp / "truncated.dcm", good[0], lambda b: b[: len(b) // 2]),
         REFUSED),
        ("wrong element length", write_raw(tmp / "wrong-length.dcm", good[0],
                                           lambda b: b[:8] + b"\x40\x00" + b[10:]), REFUSED),
        ("huge declared element length", write_raw(tmp / "huge.dcm", good[1], huge_pixel_length),
         REFUSED),
        ("sequence nested 5000 deep", write_raw(tmp / "deep.dcm", good[2], deep), REFUSED),
        ("CT modality in MR SOP class", relabelled, (status.DATASET_DOES_NOT_MATCH_SOP_CLASS,)),
        ("missing Study/Series UIDs", no_uids, (status.CANNOT_UNDERSTAND,)),
        ("UID longer than 64 characters", long_uid, (status.CANNOT_UNDERSTAND,)),
    ]


def _pdu_cases(port: int) -> list[tuple[str, Callable[[], list[str]], set[str]]]:
    rejected = {"A-ABORT", "closed"}
    return [
        ("all-space calling AE title", lambda: exchange(port, associate_rq(b" " * 16)),
         rejected | {"A-ASSOCIATE-RJ (result 1, source 1, reason 3)"}),
        ("all-space called AE title", lambda: exchange(port, associate_rq(b"MILANPRISMA",
                                                                          b" " * 16)),
         rejected | {"A-ASSOCIATE-RJ (result 1, source 1, reason 7)"}),
        ("second A-ASSOCIATE-RQ inside an association",
         lambda: exchange(port, associate_rq(b"MILANPRISMA"), associate_rq(b"MILANPRISMA"))[1:],
         rejected),
        ("raw garbage (0xFF ...)", lambda: exchange(port, b"\xff" + bytes(range(256)) * 4),
         rejected),
        ("raw garbage declaring a 134 MB A-ABORT", lambda: exchange(port, bytes(range(7, 256))),
         rejected),
        ("HTTP request", lambda: exchange(port, b"GET / HTTP/1.1\r\nHost: harmonet\r\n\r\n"),
         rejected),
        ("unknown AE title", lambda: exchange(port, associate_rq(b"NOTASCANNER")),
         {"A-ASSOCIATE-RJ (result 1, source 1, reason 3)"}),
    ]


def _push_good_repeatedly(port: int, study: Path, stop: threading.Event,
                          results: list[int]) -> None:
    while not stop.is_set():
        done = subprocess.run(storescu_command(port, study), capture_output=True, text=True,
                              timeout=120, check=False)
        results.append(done.returncode)


def test_bad_input_corpus_is_rejected_with_bounded_memory_while_a_good_push_succeeds(
    receiver: HarmonetProcess, tmp_path: Path
) -> None:
    require_tool("storescu")
    port, pid = receiver.dicom_port, receiver.proc.pid
    good_study = tmp_path / "good"
    write_study(small_study("faults-corpus-good", t1_slices=20, epi_slices=5, epi_volumes=4),
                good_study)
    assert subprocess.run(storescu_command(port, good_study), capture_output=True,
                          check=False).returncode == 0  # warm-up: imports, caches, threads
    rss_before = vm_rss_kib(pid)
    stop, pushes = threading.Event(), list[int]()
    pusher = threading.Thread(target=_push_good_repeatedly, args=(port, good_study, stop, pushes))
    pusher.start()
    rows, peak = [], rss_before
    try:
        for round_number in range(3):
            for name, item, expected in _instance_cases(tmp_path):
                [answer] = store_statuses(port, [item])
                rows.append((name, f"0x{answer:04X}" if isinstance(answer, int) else answer))
                assert answer in expected, (name, answer)
            ct = copy.deepcopy(_instances()[3])
            ct.SOPClassUID = CT
            [answer] = store_statuses(port, [ct], contexts=(MR, CT))
            rows.append(("CT Image Storage SOP class", "presentation context rejected"))
            assert isinstance(answer, str) and "No presentation context" in answer
            for name, run, allowed in _pdu_cases(port):
                answers = run()
                rows.append((name, ", ".join(answers)))
                assert answers and answers[-1] in allowed, (name, answers)
            samples: list[int] = []

            def sample(into: list[int] = samples) -> None:
                time.sleep(0.5)
                into.append(vm_rss_kib(pid))

            sent, ending = send_huge_declared_pdu(port, pdu_type=0x01, send_bytes=64 << 20,
                                                  while_open=sample)
            rows.append(("A-ASSOCIATE-RQ declaring 4 GiB, 64 MiB sent",
                         f"{ending} after {sent >> 20} MiB"))
            assert ending in ("closed by the receiver", "closed") and sent < 64 << 20
            peak = max([peak, *samples, vm_rss_kib(pid)])
            if round_number == 0:
                for name, answer in rows:
                    print(f"  {name:48} -> {answer}")
    finally:
        stop.set()
        pusher.join(timeout=120)
    rss_after = vm_rss_kib(pid)
    echo = AE(ae_title="MILANPRISMA")
    echo.add_requested_context("1.2.840.10008.1.1")
    assoc = echo.associate("127.0.0.1", port, ae_title="HARMONET")
    echoed = assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
    print(f"bad input: {len(rows)} hostile inputs in 3 rounds, all rejected; concurrent good "
          f"pushes {len(pushes)} ({pushes.count(0)} succeeded); receiver RSS {rss_before >> 10} "
          f"MiB before, peak {peak >> 10} MiB, after {rss_after >> 10} MiB (bound +"
          f"{RSS_BOUND_KIB >> 10} MiB)")
    assert pushes and set(pushes) == {0}
    assert peak - rss_before < RSS_BOUND_KIB
    assert echoed and receiver.proc.poll() is None
    assert receiver.metric_value("harmonet_receiver_rejected_total", reason="pdu_too_large") >= 3
    assert receiver.metric_value("harmonet_receiver_rejected_total", reason="invalid_pdu") >= 3


# --- fuzzing -------------------------------------------------------------------------

_PDU_TYPES = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 6, 7]), st.integers(0, 255))


@st.composite
def _pdus(draw: st.DrawFn) -> bytes:
    base = bytearray(associate_rq(b"MILANPRISMA"))[6:]
    for _ in range(draw(st.integers(0, 8))):
        base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
    body = draw(st.one_of(st.just(bytes(base)), st.binary(max_size=2048),
                          st.just(bytes(base[: draw(st.integers(0, len(base)))]))))
    declared = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFFFFFF)))
    return pdu(draw(_PDU_TYPES), body, declared=declared)


def test_fuzzed_pdus_never_hang_crash_or_grow_the_receiver(receiver: HarmonetProcess) -> None:
    port, pid = receiver.dicom_port, receiver.proc.pid
    rss_before = vm_rss_kib(pid)
    outcomes: dict[str, int] = {}

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_pdus())
    def one(payload: bytes) -> None:
        answers = exchange(port, payload, timeout=15, half_close=True)
        outcome = answers[0].split(" (")[0] if answers else "nothing"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert outcome in ("A-ABORT", "A-ASSOCIATE-RJ", "A-ASSOCIATE-AC", "closed"), answers

    one()
    rss_after = vm_rss_kib(pid)
    print(f"PDU fuzzing: 150 examples {dict(sorted(outcomes.items()))}; receiver RSS "
          f"{rss_before >> 10} -> {rss_after >> 10} MiB; alive {receiver.proc.poll() is None}")
    assert receiver.proc.poll() is None
    assert rss_after - rss_before < RSS_BOUND_KIB
    after = exchange(port, associate_rq(b"MILANPRISMA"))
    assert after[0] == "A-ASSOCIATE-AC", after


def _encoded(ds: Dataset) -> bytes:
    encoded = encode(ds, False, True)  # explicit VR little endian, as pynetdicom sends it
    assert encoded is not None
    return encoded


def test_fuzzed_datasets_get_a_status_and_only_good_ones_are_stored(tmp_path: Path) -> None:
    from services.config import ScannerRef

    wire = _encoded(_instances()[0])
    ingestor = Ingestor(config=load_config(None), blobs=FileBlobStore(tmp_path),
                        tracker=StudyTracker(InMemoryStateStore()),
                        pseudonymiser=Pseudonymiser(key=b"k" * 32))
    scanner = ingestor.config.scanner_for_ae("MILANPRISMA")
    assert isinstance(scanner, ScannerRef)
    outcomes: dict[str, int] = {}

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, len(wire) - 1), st.integers(0, 255)), max_size=6),
           st.one_of(st.just(len(wire)), st.integers(0, len(wire))), st.binary(max_size=64))
    def one(flips: list[tuple[int, int]], cut: int, tail: bytes) -> None:
        data = bytearray(wire)
        for at, value in flips:
            data[at] = value
        data = data[:cut] + tail if cut < len(wire) else data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = decode(io.BytesIO(bytes(data)), False, True, False)
                ds.file_meta = copy.deepcopy(_file_meta())
            except Exception:  # the SCP answers 0xC000 for what pynetdicom cannot decode
                outcomes["undecodable"] = outcomes.get("undecodable", 0) + 1
                return
            result = ingestor.ingest(ds, scanner=scanner, context_sop_class=MR)
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        assert result.status in (status.SUCCESS, *REFUSED), result
        if result.status == status.SUCCESS:
            assert result.key is not None and ingestor.blobs.exists(result.key)

    one()
    stored = list(tmp_path.rglob("*.dcm"))
    print(f"data set fuzzing: 200 examples {dict(sorted(outcomes.items()))}; files stored "
          f"{len(stored)}, temporary files {len(list(tmp_path.rglob('.tmp-*')))}")
    assert not list(tmp_path.rglob(".tmp-*"))


def _file_meta() -> FileMetaDataset:
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta
