"""`harmonet demo`: a simulated consortium pushed into a running HarmoNet, then watched.

Three sites with scanners of three vendors push subjects (T1w + rs-fMRI) and a weekly
fBIRN phantom over real C-STORE (`services/demo_data.py` builds the data); one scanner
drifts, one site deviates from the protocol. The demo then waits until every study is
processed and prints a summary table and the URLs to look at. It talks to HarmoNet only
over DICOM and HTTP, and reads the event journal of `harmonet up` when it runs on the
same host (`<data dir>/events/events.jsonl`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pynetdicom import AE, build_context
from tqdm import tqdm

from services import demo_data, demo_harmonize
from services.demo_data import CONSORTIUM, QUICK, DemoScanner, DemoSizes, DemoStudy
from services.demo_progress import Observed, ProgressSource, choose_source, reachable

VERIFICATION = "1.2.840.10008.1.1"
EXIT_OK, EXIT_INCOMPLETE, EXIT_UNREACHABLE = 0, 1, 3
GRACE_SECONDS = 60.0
ASSOCIATION_ATTEMPTS = 4
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def register(verbs: Any, service_parsers: dict[str, argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "demo", help="simulate a 3-site consortium pushing into a running HarmoNet",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env = os.environ.get
    parser.add_argument("--host", default="127.0.0.1", help="receiver host (DICOM)")
    parser.add_argument("--port", type=int, default=int(env("HARMONET_DICOM_PORT", "11112")))
    parser.add_argument("--aec", default=env("HARMONET_AE_TITLE", "HARMONET"),
                        help="the receiver's AE title")
    api_port = env("HARMONET_API_PORT", "8000")
    parser.add_argument("--api", default=f"http://127.0.0.1:{api_port}",
                        help="registry base URL (web page and /api/v1)")
    parser.add_argument("--token", default=env("HARMONET_TOKEN"),
                        help="registry API token (harmonet token create --site ... --role ...)")
    metrics_port = env("HARMONET_METRICS_PORT", "9100")
    parser.add_argument("--metrics-url", default=f"http://127.0.0.1:{metrics_port}/metrics")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(env("HARMONET_DATA_DIR", "./harmonet-data")),
                        help="the data dir of `harmonet up` (its event journal is read)")
    parser.add_argument("--start", action="store_true",
                        help="start `harmonet up` in --data-dir if nothing listens on --port")
    parser.add_argument("--quick", action="store_true", help="smallest sizes (tests, a look)")
    parser.add_argument("--sites", type=int, choices=(1, 2, 3), default=3)
    parser.add_argument("--subjects", type=int, help="subjects per site (default 2, quick 1)")
    parser.add_argument("--weeks", type=int,
                        help="weekly phantom sessions per scanner (default 12, quick 10; "
                        f"drift starts after week {demo_data.DRIFT_AFTER_WEEK})")
    parser.add_argument("--seed", default="demo", help="same seed, same studies")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every study to be processed")
    parser.add_argument("--no-wait", action="store_true", help="push, then exit")
    parser.add_argument("--no-harmonize", action="store_true",
                        help="skip fitting a harmonization model and the follow-up visits")
    parser.set_defaults(handler=run_demo)


@dataclass(frozen=True)
class DemoOptions:
    host: str
    port: int
    called_ae: str
    api: str
    token: str | None
    metrics_url: str
    data_dir: Path
    sizes: DemoSizes
    scanners: tuple[DemoScanner, ...]
    seed: str
    timeout: float
    wait: bool = True
    harmonize: bool = True
    progress: bool = field(default_factory=lambda: sys.stderr.isatty())


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    sizes = QUICK if args.quick else DemoSizes()
    if args.subjects is not None:
        sizes = replace(sizes, subjects=max(0, args.subjects))
    if args.weeks is not None:
        sizes = replace(sizes, weeks=max(1, args.weeks))
    return DemoOptions(
        host=args.host, port=args.port, called_ae=args.aec, api=args.api.rstrip("/"),
        token=args.token, metrics_url=args.metrics_url, data_dir=args.data_dir, sizes=sizes,
        scanners=CONSORTIUM[: args.sites], seed=args.seed, timeout=args.timeout,
        wait=not args.no_wait, harmonize=not args.no_harmonize,
    )


def run_demo(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    with contextlib.ExitStack() as stack:
        started = args.start and not _listening(options.host, options.port)
        if started:
            stack.enter_context(_started_harmonet(options))
        code = demo(options)
        if started and sys.stdin.isatty():
            print("HarmoNet keeps running for you to look around; Ctrl-C stops it.")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return code


def demo(options: DemoOptions) -> int:
    """Push the consortium's studies, wait until they are processed, print the summary."""
    unknown = [s.ae_title for s in options.scanners if not echo(options, s.ae_title)]
    if unknown:
        print(f"HarmoNet at {options.host}:{options.port} (AE {options.called_ae}) refused or "
              f"did not answer a C-ECHO from {', '.join(unknown)}. Is `harmonet up` running "
              "with the built-in demo configuration (or one listing these AE titles)? "
              "`harmonet demo --start` starts it.",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    schedule = demo_data.plan(options.scanners, options.sizes, seed=options.seed)
    started = time.monotonic()
    sent = push_all(options, schedule)
    push_seconds = time.monotonic() - started
    total = sum(r.studies for r in sent.values())
    print(f"pushed {total} studies ({sum(r.instances for r in sent.values())} instances) "
          f"in {push_seconds:.0f} s", file=sys.stderr)
    if not options.wait:
        return EXIT_OK if all(r.failed == 0 for r in sent.values()) else EXIT_INCOMPLETE
    token = options.token or local_viewer_token(options)
    options = replace(options, token=token)
    source = choose_source(api=options.api, token=token, data_dir=options.data_dir)
    if source is None:
        print("cannot watch progress: registry API unreachable and no event journal under "
              f"{options.data_dir} (pass --api/--token or --data-dir)", file=sys.stderr)
        return EXIT_INCOMPLETE
    observed, stage = wait_processed(options, source, sent)
    step: HarmonizationStep | None = None
    if options.harmonize and _all_done(sent, observed, stage):
        step = harmonize_then_follow_up(options, sent)
        if step.version is not None:
            observed, stage = wait_processed(options, source, sent)
    print(summary_table(options, sent, observed, stage=stage))
    print(outcome_lines(options, observed, step))
    print(urls(options))
    print(f"total {time.monotonic() - started:.0f} s (push {push_seconds:.0f} s)",
          file=sys.stderr)
    done = _all_done(sent, observed, stage)
    return EXIT_OK if done and _expected(options, observed, step) else EXIT_INCOMPLETE


@dataclass(frozen=True)
class HarmonizationStep:
    version: str | None  # the model installed, None when the step could not run
    detail: str  # what was fitted, or why not
    follow_ups: int = 0  # follow-up studies sent once the model was current


def harmonize_then_follow_up(options: DemoOptions, sent: dict[str, Sent]) -> HarmonizationStep:
    """Fit ComBat on the first wave's subjects, install it while HarmoNet runs, send every
    subject's follow-up visit (`services/demo_harmonize.py`); adds them to `sent`."""
    journal = options.data_dir / "events" / "events.jsonl"
    if not journal.exists():
        return HarmonizationStep(None, f"no event journal of `harmonet up` at {journal}")
    model, detail = demo_harmonize.fit_reference(demo_harmonize.reference_table(journal))
    if model is None:
        return HarmonizationStep(None, detail)
    version, info = demo_harmonize.install(model, options.data_dir)
    if version is None:
        return HarmonizationStep(None, f"`harmonet harmonize install` failed: {info}")
    print(f"harmonization model {version} installed ({detail}); sending follow-up visits",
          file=sys.stderr)
    again = push_all(options, demo_data.follow_ups(options.scanners, options.sizes,
                                                   seed=options.seed))
    for scanner_id, more in again.items():
        total = sent.setdefault(scanner_id, Sent())
        total.studies += more.studies
        total.instances += more.instances
        total.failed += more.failed
    return HarmonizationStep(version, detail, sum(r.studies for r in again.values()))


# --- DICOM -----------------------------------------------------------------------------


def echo(options: DemoOptions, calling_ae: str) -> bool:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(options.host, options.port, ae_title=options.called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


@dataclass
class Sent:
    studies: int = 0
    instances: int = 0
    failed: int = 0
    phantoms: int = 0


def push_all(options: DemoOptions, schedule: dict[str, list[DemoStudy]]) -> dict[str, Sent]:
    """One thread per scanner, each pushing its studies in acquisition order."""
    results = {scanner_id: Sent() for scanner_id in schedule}
    errors: list[BaseException] = []

    def push_scanner(position: int, scanner_id: str, studies: list[DemoStudy]) -> None:
        total = sum(s.instance_count for s in studies)
        label = f"{studies[0].scanner.site:>7} {scanner_id:<15}" if studies else scanner_id
        with tqdm(total=total, desc=label, unit="inst", position=position, leave=True,
                  disable=not options.progress) as bar:
            try:
                for study in studies:
                    try:
                        push_study(options, study, results[scanner_id], bar)
                    except ConnectionError as exc:
                        tqdm.write(f"{scanner_id}: {study.label} not sent: {exc}",
                                   file=sys.stderr)
            except BaseException as exc:  # reported after the other threads finish
                errors.append(exc)

    threads = [threading.Thread(target=push_scanner, args=(i, sid, studies), daemon=True)
               for i, (sid, studies) in enumerate(schedule.items())]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def push_study(options: DemoOptions, study: DemoStudy, sent: Sent, bar: tqdm[Any]) -> None:
    """One association per study, as a scanner sends an exam when it is finished; an
    association lost midway is opened again and the rest of the study sent (a busy
    receiver may time out; an instance sent twice is stored once)."""
    datasets = list(demo_data.instances(study))
    cursor = _Cursor()
    for attempt in range(1, ASSOCIATION_ATTEMPTS + 1):
        try:
            _send_from(options, study, datasets, cursor, sent, bar)
            break
        except ConnectionError:
            if attempt == ASSOCIATION_ATTEMPTS:
                sent.failed += len(datasets) - cursor.position
                raise
            time.sleep(1.0 * attempt)
    sent.studies += 1
    sent.phantoms += study.kind == "phantom"


@dataclass
class _Cursor:
    position: int = 0  # instances of the study answered so far


def _send_from(options: DemoOptions, study: DemoStudy, datasets: list[Any], cursor: _Cursor,
               sent: Sent, bar: tqdm[Any]) -> None:
    ae = AE(ae_title=study.scanner.ae_title)
    # A C-STORE response takes milliseconds (seconds on a busy host); one missing for 15 s
    # means a stalled association, abandoned for a new one that sends the rest.
    ae.acse_timeout = 30
    ae.dimse_timeout = 15
    ae.network_timeout = 60
    ae.requested_contexts = [build_context(MR_IMAGE_STORAGE)]
    assoc = ae.associate(options.host, options.port, ae_title=options.called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"{study.scanner.ae_title}: association with "
                              f"{options.called_ae}@{options.host}:{options.port} refused")
    _no_delay(assoc)
    try:
        for ds in datasets[cursor.position:]:
            if not assoc.is_established:
                raise ConnectionError("association lost")
            status = assoc.send_c_store(ds)
            if not status:
                raise ConnectionError("no C-STORE response (association aborted)")
            code = int(getattr(status, "Status", -1))
            if not (code == 0 or 0xB000 <= code <= 0xBFFF):
                sent.failed += 1
            cursor.position += 1
            sent.instances += 1
            bar.update(1)
    finally:
        if assoc.is_established:
            assoc.release()


def _no_delay(assoc: Any) -> None:
    """TCP_NODELAY, as DCMTK's storescu with TCP_NODELAY=1: pynetdicom writes the command
    and the dataset of a C-STORE as separate PDUs, and Nagle's algorithm holds the second
    until the peer's delayed ACK (~40 ms), which capped a push at ~20 instances/s."""
    raw = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --- waiting and reporting --------------------------------------------------------------


def wait_processed(options: DemoOptions, source: ProgressSource, sent: dict[str, Sent]
                   ) -> tuple[Observed, str]:
    """Poll until every sent study reached the last stage; returns what was seen and the
    stage that counted. When a later stage stays silent for `GRACE_SECONDS` after every
    study reached an earlier one (a service installed but not running), that one counts."""
    expected = sum(r.studies for r in sent.values())
    deadline = time.monotonic() + options.timeout
    complete_since: dict[str, float] = {}
    final = source.stages[0]
    print(f"waiting for {expected} studies to reach {source.describe()} "
          "(a study is complete after HARMONET_STABLE_SECONDS of quiet)", file=sys.stderr)
    with tqdm(total=expected, desc="processed", unit="study",
              disable=not options.progress) as bar:
        while True:
            try:
                observed = source.poll()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                tqdm.write(f"cannot read progress from {source.describe()}: {exc}",
                           file=sys.stderr)
                if time.monotonic() > deadline:
                    return Observed(), final
                time.sleep(5.0)
                continue
            now = time.monotonic()
            bar.update(_count(sent, observed, final) - bar.n)
            if _count(sent, observed, final) >= expected:
                return observed, final
            fallback = _silent_later_stage(source.stages, sent, observed, complete_since, now)
            if fallback is not None:
                print(f"\nno {final} within {GRACE_SECONDS:.0f} s of every study reaching "
                      f"{fallback} (is that service running?): counting {fallback}",
                      file=sys.stderr)
                return observed, fallback
            if now > deadline:
                return observed, final
            time.sleep(1.0)


def _count(sent: dict[str, Sent], observed: Observed, stage: str) -> int:
    return sum(min(len(observed.at(stage, sid)), r.studies) for sid, r in sent.items())


def _silent_later_stage(stages: tuple[str, ...], sent: dict[str, Sent], observed: Observed,
                        complete_since: dict[str, float], now: float) -> str | None:
    expected = sum(r.studies for r in sent.values())
    for index, stage in enumerate(stages[1:], start=1):
        if _count(sent, observed, stage) < expected:
            continue
        since = complete_since.setdefault(stage, now)
        later_silent = not any(observed.seen(later) for later in stages[:index])
        return stage if later_silent and now - since >= GRACE_SECONDS else None
    return None


def _all_done(sent: dict[str, Sent], observed: Observed, stage: str) -> bool:
    return _count(sent, observed, stage) >= sum(r.studies for r in sent.values())


def _expected(options: DemoOptions, observed: Observed,
              step: HarmonizationStep | None = None) -> bool:
    if step is not None and step.version is not None and (
            _harmonized(observed) < step.follow_ups):
        return False
    for scanner in options.scanners:
        if scanner.drifts and options.sizes.weeks > demo_data.DRIFT_AFTER_WEEK and not (
                observed.alerts.get(scanner.scanner_id)):
            return False
        if scanner.deviates and options.sizes.subjects > 0 and not (
                observed.deviant.get(scanner.scanner_id)):
            return False
    return True


def _harmonized(observed: Observed) -> int:
    return sum(len(uids) for uids in observed.harmonized.values())


def summary_table(options: DemoOptions, sent: dict[str, Sent], observed: Observed, *,
                  stage: str) -> str:
    """One row per scanner; "processed" counts the studies that reached `stage`."""
    header = ("site", "scanner", "vendor", "studies sent", "processed", "deviant studies",
              "stability alerts", "harmonized")
    rows = [header]
    for scanner in options.scanners:
        sid = scanner.scanner_id
        alerts = sorted(observed.alerts.get(sid, set()))
        rows.append((
            scanner.site, sid, scanner.identity.manufacturer, str(sent[sid].studies),
            str(len(observed.at(stage, sid))), str(len(observed.deviant.get(sid, ()))),
            f"{len(alerts)} ({', '.join(alerts)})" if alerts else "0",
            str(len(observed.harmonized.get(sid, ()))),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def outcome_lines(options: DemoOptions, observed: Observed,
                  step: HarmonizationStep | None = None) -> str:
    lines = []
    if step is not None and step.version is None:
        lines.append(f"[--] harmonization not shown: {step.detail}")
    elif step is not None and step.version is not None:
        harmonized = _harmonized(observed)
        mark = "ok" if harmonized >= step.follow_ups else "MISSING"
        lines.append(f"[{mark}] harmonization: model {step.version[:19]}... ({step.detail}) "
                     f"installed while HarmoNet runs -> {harmonized}/{step.follow_ups} "
                     "follow-up studies harmonized (the first wave arrived before the model: "
                     "not_applicable)")
    for scanner in options.scanners:
        sid = scanner.scanner_id
        if scanner.drifts:
            alerted = sorted(observed.alerts.get(sid, set()))
            mark = "ok" if alerted else "MISSING"
            lines.append(f"[{mark}] {sid}: phantom drift (SFNR falls after week "
                         f"{demo_data.DRIFT_AFTER_WEEK}) -> stability alerts: "
                         f"{', '.join(alerted) or 'none yet'}")
        if scanner.deviates:
            mark = "ok" if observed.deviant.get(sid) else "MISSING"
            lines.append(f"[{mark}] {scanner.site}: T1w RepetitionTime "
                         f"{scanner.t1_repetition_time_ms:g} ms (protocol 2300 ms +- 1 %) -> "
                         f"{len(observed.deviant.get(sid, ()))} studies flagged deviant")
    return "\n".join(lines)


def urls(options: DemoOptions) -> str:
    sign_in = f"?token={options.token}" if options.token else "  (sign in with a token)"
    return "\n".join([
        "Look at:",
        f"  registry web page   {options.api}/ui/{sign_in}",
        f"  REST API            {options.api}/api/v1/  (OpenAPI: {options.api}/docs)",
        f"  metrics             {options.metrics_url}",
        f"  event journal       {options.data_dir / 'events' / 'events.jsonl'}",
        f"  QC reports          {options.data_dir / 'qc'}/<site>/<study>/r<revision>/",
    ])


def local_viewer_token(options: DemoOptions) -> str | None:
    """A viewer token for every site, made with `harmonet token create` when the registry
    answers on this host and its data dir is `--data-dir` (None when that is not so)."""
    host = urllib.parse.urlsplit(options.api).hostname
    if host not in ("127.0.0.1", "localhost", "::1") or not options.data_dir.exists():
        return None
    if not reachable(f"{options.api}/healthz"):
        return None
    env = {**os.environ, "HARMONET_DATA_DIR": str(options.data_dir),
           "HARMONET_LOG_LEVEL": "WARNING"}
    made = subprocess.run(
        [sys.executable, "-m", "services.cli", "token", "create", "--site", "*",
         "--role", "viewer", "--name", "harmonet demo"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    token = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
    return token if made.returncode == 0 and token else None


# --- starting `harmonet up` -------------------------------------------------------------


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
        return True
    return False


@contextlib.contextmanager
def _started_harmonet(options: DemoOptions) -> Iterator[subprocess.Popen[bytes]]:
    options.data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HARMONET_DATA_DIR": str(options.data_dir),
           "HARMONET_DICOM_PORT": str(options.port)}
    # A demo wants results in seconds, not after the production default of 60 s quiet.
    env.setdefault("HARMONET_STABLE_SECONDS", "5")
    log_path = options.data_dir / "harmonet-up.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env,
                                stdout=log, stderr=log)
    print(f"started `harmonet up` (pid {proc.pid}, data dir {options.data_dir}, "
          f"log {log_path})", file=sys.stderr)
    try:
        deadline = time.monotonic() + 60
        while not _listening(options.host, options.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`harmonet up` did not start; see {log_path}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
