"""Study-list latency of the registry API: p50/p99 of GET /api/v1/studies at a fixed
open-loop request rate, with N studies in the database.

    python benchmarks/registry.py [--database-url postgresql://...] [--studies 10000]
                                  [--rate 200] [--seconds 20] [--quick]

Without --database-url it uses SQLite in a temporary directory. The API runs in its
own process (uvicorn), the load generator here; each request carries a viewer token
scoped to one site (the production path: token lookup, site filter, count, audit row).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.auth import create_token
from registry.db import make_engine, migrate, session_factory
from registry.models import Scanner, Site, Study

SITES = ("milan", "naples", "paris", "berlin")
timeline: list[tuple[float, float]] = []


def seed(url: str, studies: int) -> str:
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        for site in SITES:
            session.merge(Site(id=site))
            session.merge(Scanner(id=f"{site}-scanner", site=site))
        session.flush()
        rows = [dict(study_uid=f"2.25.{i}", site=SITES[i % len(SITES)],
                     scanner=f"{SITES[i % len(SITES)]}-scanner", subject_id=f"s{i % 3000}",
                     is_phantom=False, study_date="20260101", revision=1, instance_count=400,
                     compliance_status="compliant", qc_status="measured",
                     harmonization_status="harmonized", processed=True,
                     received_at=now - timedelta(minutes=i), updated_at=now)
                for i in range(studies)]
        session.execute(Study.__table__.insert(), rows)
        token = create_token(session, sites=["milan"], role="viewer")
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:  # fresh statistics, as a live database has
            connection.execute(text("ANALYZE"))
            connection.commit()
    engine.dispose()
    return token


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc), including the warm-up."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(url: str, port: int) -> None:
    import uvicorn

    from registry.api import RegistryState, create_app

    engine = make_engine(url)
    app = create_app(RegistryState(sessions=session_factory(engine)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class _Connection:
    """One keep-alive HTTP/1.1 connection; a raw client costs the load generator far less
    CPU than httpx, which matters when both share two cores with the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status


async def load(port: int, token: str, rate: float, seconds: float,
               path: str = "/api/v1/studies?limit=50") -> list[float]:
    """Open loop: request i starts at i/rate whatever the server's pace (no coordinated
    omission); a request waiting for a free connection opens a new one."""
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    idle: list[_Connection] = []
    latencies: list[float] = []
    timeline.clear()

    async def one(scheduled: float) -> None:
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                raise ConnectionError
            status = await connection.get(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            # The server closed an idle keep-alive connection: open a fresh one.
            connection = _Connection(*await asyncio.open_connection("127.0.0.1", port))
            status = await connection.get(request)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        latencies.append(time.perf_counter() - scheduled)
        timeline.append((scheduled, time.perf_counter() - scheduled))
        idle.append(connection)

    for _ in range(200):  # warm-up: connections, caches, query plans
        await one(time.perf_counter())
    latencies.clear()
    timeline.clear()
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.writer.close()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url")
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--verbose", action="store_true", help="latency per second")
    parser.add_argument("--quick", action="store_true", help="1000 studies, 50 req/s, 3 s")
    args = parser.parse_args()
    if args.quick:
        args.studies, args.rate, args.seconds = 1000, 50.0, 3.0
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'registry.sqlite3'}"
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        token = seed(url, args.studies)
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(url, port))
        server.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            cpu_before = _cpu_seconds(server.pid)
            latencies = asyncio.run(load(port, token, args.rate, args.seconds))
            server_cpu = _cpu_seconds(server.pid) - cpu_before
        finally:
            server.terminate()
            server.join(10)
            if server.is_alive():
                server.kill()
                server.join()
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    backend = url.split(":", 1)[0]
    print(f"RESULT case=study_list backend={backend} studies={args.studies} rate={args.rate:g} "
          f"requests={len(ms)} p50_ms={p50:.2f} p99_ms={p99:.2f} max_ms={ms[-1]:.2f} "
          f"server_cpu_ms_per_request={1000 * server_cpu / max(len(ms), 1):.2f}")
    print(f"machine load average during the run: {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores (other processes compete for them)")
    print(f"target p99 <= 50 ms: {'met' if p99 <= 50 else 'NOT met'}")
    if args.verbose and timeline:
        first = min(t for t, _ in timeline)
        for second in range(int(args.seconds) + 1):
            window = sorted(1000 * x for t, x in timeline if int(t - first) == second)
            if window:
                print(f"  t={second:>3}s n={len(window)} p50={statistics.median(window):.1f} "
                      f"max={window[-1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
