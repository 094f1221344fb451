"""End-to-end latency: from the last instance of a T1w + rs-fMRI study sent to the
`study.processed` event received, on the real RabbitMQ, every service in its own process
(receiver, compliance, qc, harmonize, registry).

    python benchmarks/e2e.py [--amqp-url URL] [--redis-url URL] [--database-url URL]
                             [--quiet-seconds 10] [--quick]

Without --amqp-url a private vhost is created on the local RabbitMQ (rabbitmqctl) and
deleted afterwards; the services share their state in Redis under a private key prefix
(several processes on one data dir need it), deleted afterwards. The study is synthetic
(services.synthetic): full size is a 176-slice 256x256 MPRAGE and a 36-slice x 100-volume
BOLD run; --quick sends a tiny one. The target is the quiet period
(HARMONET_STABLE_SECONDS) + 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SERVICES = ("registry", "harmonize", "qc", "compliance", "receiver")
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


@contextlib.contextmanager
def private_vhost(amqp_url: str | None) -> Iterator[str]:
    if amqp_url is not None:
        yield amqp_url
        return
    if shutil.which("rabbitmqctl") is None:
        raise SystemExit("rabbitmqctl not found: pass --amqp-url")
    vhost = f"harmonet-bench-{uuid.uuid4().hex[:10]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)
        parts = urlsplit(DEFAULT_AMQP)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], check=False, capture_output=True)


@contextlib.contextmanager
def services(env: dict[str, str], logs: Path) -> Iterator[dict[str, int]]:
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for name in SERVICES:
            metrics_port = free_port()
            extra = {"HARMONET_METRICS_PORT": str(metrics_port)}
            if name == "receiver":
                ports["dicom"] = free_port()
                extra.update(HARMONET_DICOM_PORT=str(ports["dicom"]),
                             HARMONET_DICOM_HOST="127.0.0.1")
            if name == "registry":
                ports["api"] = free_port()
                extra.update(HARMONET_API_PORT=str(ports["api"]), HARMONET_API_HOST="127.0.0.1")
            with (logs / f"{name}.log").open("wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "services.cli", name],
                                        env={**env, **extra}, stdout=log, stderr=log, cwd=REPO)
            procs.append(proc)
            wait_for_port(metrics_port, proc)
        wait_for_port(ports["dicom"], procs[-1])
        wait_for_port(ports["api"], procs[0])
        yield ports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def send(folder: Path, port: int) -> None:
    storescu = shutil.which("storescu")
    if storescu and "dcmtk" in subprocess.run([storescu, "--version"], capture_output=True,
                                              text=True).stdout.lower():
        command = [storescu, "-aet", "MILANPRISMA", "-aec", "HARMONET", "+sd", "+r",
                   "127.0.0.1", str(port), str(folder)]
    else:
        command = [sys.executable, "-m", "services.cli", "send", str(folder), "--port",
                   str(port), "--aet", "MILANPRISMA"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"send failed: {done.stderr[-2000:]}")


async def measure(amqp_url: str, folder: Path, dicom_port: int, wait_seconds: float
                  ) -> tuple[float, float, dict[str, object]]:
    import aio_pika

    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("harmonet.events", aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="study.processed")
        await asyncio.to_thread(send, folder, dicom_port)
        sent, sent_wall = time.monotonic(), time.time()
        async with asyncio.timeout(wait_seconds), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                return time.monotonic() - sent, sent_wall, json.loads(message.body)
    finally:
        await connection.close()
    raise RuntimeError("no study.processed")


def stage_times(api_port: int, token: str, study_uid: str, sent_wall: float
                ) -> dict[str, float]:
    """When the registry recorded each stage (event times, wall clock), from its API."""
    import urllib.request
    from datetime import datetime

    request = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/v1/studies/{study_uid}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        revision = json.loads(response.read())["revisions"][0]
    names = ("received", "compliance", "qc", "harmonized", "processed")
    return {name: datetime.fromisoformat(revision[f"{name}_at"]).timestamp() - sent_wall
            for name in names if revision.get(f"{name}_at")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--amqp-url")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", help="registry database (default: SQLite)")
    parser.add_argument("--quiet-seconds", type=float, default=10.0,
                        help="HARMONET_STABLE_SECONDS")
    parser.add_argument("--quick", action="store_true", help="tiny study, 2 s quiet period")
    args = parser.parse_args()
    from services.synthetic import StudySpec, small_study, write_study

    quiet = 2.0 if args.quick else args.quiet_seconds
    spec = small_study("bench-e2e-quick") if args.quick else StudySpec(seed="bench-e2e")
    with tempfile.TemporaryDirectory(prefix="harmonet-e2e-") as tmp, \
            private_vhost(args.amqp_url) as amqp_url:
        root = Path(tmp)
        files = write_study(spec, root / "study")
        env = {**os.environ, "HARMONET_DATA_DIR": str(root / "data"),
               "HARMONET_AMQP_URL": amqp_url, "HARMONET_STABLE_SECONDS": str(quiet),
               "HARMONET_LOG_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore"}
        env.pop("HARMONET_CONFIG", None)
        prefix = f"harmonet-bench-{uuid.uuid4().hex[:10]}:"
        env.update(HARMONET_REDIS_URL=args.redis_url, HARMONET_STATE_PREFIX=prefix)
        if args.database_url:
            env["HARMONET_DATABASE_URL"] = args.database_url
        else:
            env.pop("HARMONET_DATABASE_URL", None)
        try:
            token = subprocess.run(
                [sys.executable, "-m", "services.cli", "token", "create", "--site", "*",
                 "--role", "admin"], env=env, cwd=REPO, capture_output=True, text=True,
                check=True).stdout.strip()
            with services(env, root) as ports:
                seconds, sent_wall, processed = asyncio.run(
                    measure(amqp_url, root / "study", ports["dicom"], wait_seconds=quiet + 600))
                stages = stage_times(ports["api"], token, str(processed["subject"]), sent_wall)
        except Exception:
            for log in sorted(root.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}",
                      file=sys.stderr)
            raise
        finally:
            from services.state.redis import RedisStateStore

            store = RedisStateStore(args.redis_url, prefix=prefix)
            with contextlib.suppress(Exception):
                store.flush_prefix()
            store.close()
    data = processed["data"]
    assert isinstance(data, dict)
    target = quiet + 30.0
    print(f"RESULT case=e2e instances={len(files)} quiet_seconds={quiet:g} "
          f"seconds={seconds:.2f} target_seconds={target:g} "
          f"met={'yes' if seconds <= target else 'no'} cores={os.cpu_count()}")
    print(f"study.processed stages: {json.dumps(data.get('stages'), sort_keys=True)}")
    print("stage recorded at (s after the last instance was sent): " + ", ".join(
        f"{name}={at:.1f}" for name, at in stages.items()))
    print(f"machine load average: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
