"""Ingest benchmark: one synthetic fMRI study pushed by DCMTK storescu to several DICOM peers.

Peers: Orthanc (fsync on), DCMTK storescp, the HarmoNet receiver (pseudonymisation and
fsync on), and a bare pynetdicom SCP that only writes `encoded_dataset()` with fsync,
stock and with `receiver.tuning` applied. Each peer gets one association (one storescu
sending every file) and N concurrent associations (N storescu processes, a share
each). Every peer listens inside a private network namespace (the script re-runs
itself under `unshare --net`), so nothing is reachable from the machine's interfaces.

    python benchmarks/ingest.py [--instances N] [--senders 4] [--peers a,b] [--quick]

Each run prints a `RESULT peer=... senders=... stored=... rate=...` line, then a table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ISOLATED_ENV = "HARMONET_BENCH_NETNS"
ALL_PEERS = ("orthanc", "storescp", "harmonet", "harmonet-stock", "bare", "bare-tuned")
DEFAULT_PEERS = ("orthanc", "storescp", "harmonet", "bare", "bare-tuned")
LABELS = {
    "orthanc": "Orthanc (fsync)",
    "storescp": "DCMTK storescp (--fork, no fsync)",
    "harmonet": "HarmoNet receiver (tuned)",
    "harmonet-stock": "HarmoNet receiver (stock pynetdicom)",
    "bare": "bare pynetdicom SCP (stock)",
    "bare-tuned": "bare pynetdicom SCP (tuned)",
}
CALLED_AE = "BENCHSCP"
CALLING_AES = [f"BENCH{i}" for i in range(1, 17)]
DCMTK_ENV = {"TCP_NODELAY": "1"}  # Debian's DCMTK otherwise waits ~40 ms per PDU (Nagle)


# -- plumbing -------------------------------------------------------------------------------


def dcmtk(name: str) -> str:
    """DCMTK's `name`, not the pynetdicom Python app of the same name earlier on PATH."""
    for candidate in (f"/usr/bin/{name}", f"/usr/local/bin/{name}", shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run([candidate, "--version"], capture_output=True, text=True,
                                   check=False)
            if "dcmtk" in (probe.stdout + probe.stderr).lower():
                return candidate
    raise SystemExit(f"DCMTK {name} not found (apt-get install dcmtk)")


def bring_loopback_up() -> None:
    """`ip link set lo up` without iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def only_loopback() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def reexec_isolated(argv: list[str]) -> int:
    unshare = shutil.which("unshare")
    if unshare is None:
        print("benchmark: needs `unshare` (util-linux) for a private network namespace",
              file=sys.stderr)
        return 2
    command = [unshare, "--net"]
    if os.geteuid() != 0:
        command.append("--map-root-user")
    env = {**os.environ, ISOLATED_ENV: "1"}
    done = subprocess.run([*command, "--", sys.executable, str(Path(__file__).resolve()), *argv],
                          env=env, check=False)
    return done.returncode


def wait_for_echo(port: int, *, called_ae: str, proc: subprocess.Popen[bytes],
                  timeout: float = 60.0) -> None:
    echoscu = dcmtk("echoscu")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode} before answering C-ECHO")
        done = subprocess.run(
            [echoscu, "-aet", CALLING_AES[0], "-aec", called_ae, "-to", "2", "127.0.0.1",
             str(port)], env={**os.environ, **DCMTK_ENV}, capture_output=True, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"no C-ECHO answer on port {port} within {timeout}s")


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 20.0) -> None:
    """SIGTERM the peer's process group (it was started as a session leader), then SIGKILL
    whatever is left of it: worker processes must not outlive their parent and keep the port."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def spawn(command: list[str], work: Path, name: str, *, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a peer in its own session (process group), output to `<work>/<name>.log`."""
    with (work / f"{name}.log").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def count_files(root: Path, *, suffix: str | None = None) -> int:
    total = 0
    for _, _, files in os.walk(root):
        total += sum(1 for f in files if not f.startswith(".")
                     and (suffix is None or f.endswith(suffix)))
    return total


# -- the study ------------------------------------------------------------------------------


def make_study(instances: int, senders: int, out_dir: Path) -> tuple[int, list[Path]]:
    """Write the study into `senders` sub-folders (contiguous shares); returns (count, folders)."""
    from services.synthetic import BOLD_EPI, T1_MPRAGE, StudySpec, write_study

    t1_slices = max(8, min(T1_MPRAGE.slices, instances // 20))
    volumes = max(1, round((instances - t1_slices) / BOLD_EPI.slices))
    spec = StudySpec(seed="ingest-benchmark", series=(
        dataclasses.replace(T1_MPRAGE, slices=t1_slices),
        dataclasses.replace(BOLD_EPI, volumes=volumes),
    ))
    flat = out_dir / "all"
    paths = write_study(spec, flat)
    shares = [out_dir / f"share-{i}" for i in range(senders)]
    for share in shares:
        share.mkdir()
    chunk = -(-len(paths) // senders)
    for index, path in enumerate(paths):
        path.rename(shares[index // chunk] / path.name)
    flat.rmdir()
    return len(paths), shares


# -- peers ----------------------------------------------------------------------------------


@dataclass
class Peer:
    port: int
    called_ae: str
    stored: Callable[[], int]
    note: str = ""


@contextlib.contextmanager
def orthanc_peer(work: Path, *, senders: int) -> Iterator[Peer]:
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.access(binary, os.X_OK):
        raise SystemExit("Orthanc not found (apt-get install orthanc)")
    storage, port = work / "orthanc-storage", 4242
    config = {
        "Name": "benchmark", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "StorageCompression": False, "SyncStorageArea": True, "Plugins": [],
        "DicomAet": CALLED_AE, "DicomPort": port, "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
        "HttpServerEnabled": False, "HttpPort": 8042, "RemoteAccessAllowed": False,
        "SaveJobs": False, "StableAge": 60, "LoadPrivateDictionary": True,
    }
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    # Orthanc's DICOM layer is DCMTK: it needs TCP_NODELAY too
    proc = spawn([binary, str(config_path)], work, "orthanc", env={**os.environ, **DCMTK_ENV})
    try:
        wait_for_echo(port, called_ae=CALLED_AE, proc=proc)
        # Orthanc 1.10 writes one attachment file per instance (no compression).
        yield Peer(port, CALLED_AE, lambda: count_files(storage) - _orthanc_index_files(storage))
    finally:
        stop(proc)


def _orthanc_index_files(storage: Path) -> int:
    return sum(1 for p in storage.iterdir() if p.is_file())  # index, WAL, shm at the top level


@contextlib.contextmanager
def storescp_peer(work: Path, *, senders: int) -> Iterator[Peer]:
    out, port = work / "storescp-out", 11113
    out.mkdir()
    proc = spawn([dcmtk("storescp"), "--fork", "-aet", CALLED_AE, "-od", str(out), str(port)],
                 work, "storescp", env={**os.environ, **DCMTK_ENV})
    try:
        wait_for_echo(port, called_ae=CALLED_AE, proc=proc)
        yield Peer(port, CALLED_AE, lambda: count_files(out))
    finally:
        stop(proc)


@contextlib.contextmanager
def bare_peer(work: Path, *, senders: int, tuned: bool) -> Iterator[Peer]:
    out, port = work / "bare-out", 11114
    out.mkdir()
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(port), str(out)]
    proc = spawn([*command, *(["--tuned"] if tuned else [])], work, "bare", cwd=REPO)
    try:
        wait_for_echo(port, called_ae=CALLED_AE, proc=proc)
        yield Peer(port, CALLED_AE, lambda: count_files(out))
    finally:
        stop(proc)


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    port = 16379
    proc = spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(work)], work, "redis")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


HARMONET_CONFIG = """\
study: BENCH
sites:
  - id: bench
    scanners:
      - id: bench-prisma
        ae_titles: [{aes}]
"""

# Runs `harmonet receiver` with receiver.tuning's patches disabled (for comparison only).
_STOCK_RECEIVER = (
    "import sys, receiver.tuning as t; t.apply_low_latency_patches = lambda **k: None; "
    "from services.cli import main; sys.exit(main(['receiver']))"
)


@contextlib.contextmanager
def harmonet_peer(work: Path, *, senders: int, workers: int, stock: bool = False
                  ) -> Iterator[Peer]:
    data_dir, port = work / "harmonet-data", 11112
    data_dir.mkdir()
    config_path = work / "harmonet.yaml"
    config_path.write_text(HARMONET_CONFIG.format(aes=", ".join(CALLING_AES)))
    note = ""
    with contextlib.ExitStack() as stack:
        env = {
            **os.environ, "HARMONET_DATA_DIR": str(data_dir), "HARMONET_CONFIG": str(config_path),
            "HARMONET_DICOM_PORT": str(port), "HARMONET_DICOM_HOST": "127.0.0.1",
            "HARMONET_AE_TITLE": CALLED_AE, "HARMONET_METRICS_PORT": "19100",
            "HARMONET_STABLE_SECONDS": "600", "HARMONET_LOG_LEVEL": "WARNING",
            "HARMONET_PSEUDONYM_KEY": secrets.token_hex(32), "HARMONET_RECEIVER_WORKERS": "1",
        }
        if workers > 1:
            try:
                env["HARMONET_REDIS_URL"] = stack.enter_context(redis_server(work))
                env["HARMONET_RECEIVER_WORKERS"] = str(workers)
                note = f"{workers} processes on one shared socket, private Redis"
            except FileNotFoundError:
                note = "1 process: no redis-server for more"
        command = ["-c", _STOCK_RECEIVER] if stock else ["-m", "services.cli", "receiver"]
        proc = spawn([sys.executable, *command], work, "harmonet", env=env, cwd=REPO)
        stack.callback(stop, proc)
        wait_for_echo(port, called_ae=CALLED_AE, proc=proc)
        yield Peer(port, CALLED_AE, lambda: count_files(data_dir / "dicom", suffix=".dcm"), note)


def open_peer(name: str, work: Path, *, senders: int, workers: int
              ) -> contextlib.AbstractContextManager[Peer]:
    if name == "orthanc":
        return orthanc_peer(work, senders=senders)
    if name == "storescp":
        return storescp_peer(work, senders=senders)
    if name in ("harmonet", "harmonet-stock"):
        return harmonet_peer(work, senders=senders, workers=workers if senders > 1 else 1,
                             stock=name == "harmonet-stock")
    return bare_peer(work, senders=senders, tuned=name == "bare-tuned")


# -- one measurement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    peer: str
    senders: int
    instances: int
    stored: int
    seconds: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.stored == self.instances

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def push(peer: Peer, shares: list[Path], senders: int, work: Path) -> float:
    """storescu from `senders` processes at once (each a contiguous share); wall seconds."""
    storescu = dcmtk("storescu")
    groups = [shares] if senders == 1 else [[s] for s in shares]
    procs = []
    started = time.perf_counter()
    for index, group in enumerate(groups):
        log = (work / f"storescu-{index}.log").open("wb")
        procs.append((subprocess.Popen(
            [storescu, "-aet", CALLING_AES[index], "-aec", peer.called_ae, "+sd", "+r",
             "127.0.0.1", str(peer.port), *map(str, group)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **DCMTK_ENV}), log))
    failures = []
    for index, (proc, log) in enumerate(procs):
        if proc.wait(timeout=1800) != 0:
            failures.append(index)
        log.close()
    elapsed = time.perf_counter() - started
    for index in failures:
        tail = (work / f"storescu-{index}.log").read_text(errors="replace")[-2000:]
        print(f"storescu #{index} exited non-zero:\n{tail}", file=sys.stderr)
    return elapsed


def measure(name: str, *, senders: int, count: int, shares: list[Path], workers: int,
            scratch: Path) -> Result:
    work = Path(tempfile.mkdtemp(prefix=f"{name}-{senders}-", dir=scratch))
    try:
        os.sync()  # earlier runs' dirty pages must not be flushed on this run's time
        with open_peer(name, work, senders=senders, workers=workers) as peer:
            seconds = push(peer, shares, senders, work)
            stored = peer.stored()
        return Result(name, senders, count, stored, seconds, peer.note)
    except Exception as exc:
        logs = sorted(work.glob("*.log"))
        for log in logs:
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        return Result(name, senders, count, -1, float("nan"), f"error: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------


def machine_info(scratch: Path) -> dict[str, str]:
    import pydicom
    import pynetdicom

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = subprocess.run(["df", "-T", str(scratch)], capture_output=True, text=True, check=False)
    fs_type = fs.stdout.splitlines()[-1].split()[1] if fs.returncode == 0 else "?"
    dcmtk_version = subprocess.run([dcmtk("storescu"), "--version"], capture_output=True,
                                   text=True, check=False).stdout.splitlines()[0]
    orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    orthanc_version = "not installed"
    if os.access(orthanc, os.X_OK):
        orthanc_version = subprocess.run([orthanc, "--version"], capture_output=True, text=True,
                                         check=False).stdout.splitlines()[0]
    return {
        "cores": str(len(os.sched_getaffinity(0))), "cpu": cpu,
        "python": platform.python_version(), "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__, "dcmtk": dcmtk_version.strip("$ "),
        "orthanc": orthanc_version, "scratch": f"{scratch} ({fs_type})",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_table(results: list[Result], senders: int) -> None:
    def rate(peer: str, n: int) -> float | None:
        rates = [r.rate for r in results if r.peer == peer and r.senders == n and r.ok]
        return statistics.median(rates) if rates else None

    peers = list(dict.fromkeys(r.peer for r in results))
    counts = sorted({r.senders for r in results})
    print("\ninstances/s (median of repeats; every run verified complete)")
    header = f"{'peer':40s}" + "".join(f"{f'{n} sender' + ('s' if n > 1 else ''):>14s}"
                                       for n in counts)
    print(header + "\n" + "-" * len(header))
    for peer in peers:
        cells = []
        for n in counts:
            value = rate(peer, n)
            failed = any(not r.ok for r in results if r.peer == peer and r.senders == n)
            cells.append(f"{'FAILED' if failed else (f'{value:.0f}' if value else '-'):>14s}")
        print(f"{LABELS.get(peer, peer):40s}" + "".join(cells))
    for reference in ("orthanc", "storescp"):
        ratios = []
        for n in counts:
            ours, theirs = rate("harmonet", n), rate(reference, n)
            if ours and theirs:
                ratios.append(f"{ours / theirs:.2f}x ({n} sender{'s' if n > 1 else ''})")
        if ratios:
            print(f"HarmoNet/{reference}: " + ", ".join(ratios))
    notes = {f"{LABELS.get(r.peer, r.peer)}, {r.senders} senders: {r.note}"
             for r in results if r.note}
    for note in sorted(notes):
        print(f"note: {note}")


# -- the bare SCP (run as a child process with --serve-bare) -----------------------------------


def serve_bare(port: int, out: Path, *, tuned: bool) -> None:
    """A pynetdicom SCP that stores `event.encoded_dataset()` durably and nothing else."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    if tuned:
        from receiver.tuning import apply_low_latency_patches

        apply_low_latency_patches()

    def on_store(event: Any) -> int:
        path = out / f"{event.request.AffectedSOPInstanceUID}.dcm"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, event.encoded_dataset())
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0x0000

    ae = AE(ae_title=CALLED_AE)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.maximum_associations = 64
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    signal.pause()


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3800,
                        help="about how many instances the study has (default 3800)")
    parser.add_argument("--senders", type=int, default=4,
                        help="concurrent storescu processes in the parallel run (default 4)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help=f"comma-separated, from {','.join(ALL_PEERS)}")
    parser.add_argument("--quick", action="store_true",
                        help="a few hundred instances, one repeat (seconds; used by CI)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per peer and sender count")
    parser.add_argument("--harmonet-workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="receiver processes for the parallel run (default: cores)")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()),
                        help="where studies and peer storage go (default: the temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.instances = min(args.instances, 400)
    unknown = set(args.peers.split(",")) - set(ALL_PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), Path(args.serve_bare[1]), tuned=args.tuned)
        return 0
    if os.environ.get(ISOLATED_ENV) != "1" and not only_loopback():
        return reexec_isolated(argv)
    bring_loopback_up()

    scratch = Path(tempfile.mkdtemp(prefix="harmonet-bench-", dir=args.scratch))
    try:
        info = machine_info(scratch)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
        count, shares = make_study(args.instances, args.senders, scratch / "study")
        print(f"study: {count} instances ({args.senders} shares)", flush=True)
        results = []
        for _ in range(args.repeat):
            for name in args.peers.split(","):
                for senders in sorted({1, args.senders}):
                    result = measure(name, senders=senders, count=count, shares=shares,
                                     workers=args.harmonet_workers, scratch=scratch)
                    results.append(result)
                    print(f"RESULT peer={name} senders={senders} instances={count} "
                          f"stored={result.stored} seconds={result.seconds:.2f} "
                          f"rate={result.rate:.1f}/s{'' if result.ok else ' INCOMPLETE'}",
                          flush=True)
        print(f"\n{count} instances; load average now "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        print_table(results, args.senders)
        if args.json:
            args.json.write_text(json.dumps({
                "machine": info,
                "results": [{**dataclasses.asdict(r), "rate": r.rate} for r in results],
            }, indent=2))
        return 0 if all(r.ok for r in results) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
