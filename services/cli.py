"""The `harmonet` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from services.config import ConfigError, HarmonetConfig, load_config
from services.settings import Settings

log = logging.getLogger("harmonet")
COMMAND_ENTRY_POINT_GROUP = "harmonet.commands"
SERVICE_VERBS = ("receiver", "compliance", "qc", "harmonize", "registry")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harmonet", description=__doc__)
    verbs = parser.add_subparsers(metavar="VERB")

    up = verbs.add_parser("up", help="run the whole system in one process (embedded defaults)")
    up.set_defaults(handler=_cmd_up)
    service_parsers: dict[str, argparse.ArgumentParser] = {}
    for name in SERVICE_VERBS:
        verb = verbs.add_parser(name, help=f"run the {name} service (or one of its actions)")
        verb.set_defaults(handler=_cmd_service, service=name)
        service_parsers[name] = verb

    send = verbs.add_parser("send", help="push DICOM files over C-STORE like a scanner")
    send.add_argument("paths", nargs="+", type=Path)
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=11112)
    send.add_argument("--aet", default="HARMONETSCU", help="calling AE title")
    send.add_argument("--aec", default="HARMONET", help="called AE title")
    send.set_defaults(handler=_cmd_send)

    # Verbs owned by a service package (the receiver's `import`, `compliance check`, ...),
    # found by entry point: `register(verbs, service_parsers)` adds verbs or sub-actions.
    for entry in entry_points(group=COMMAND_ENTRY_POINT_GROUP):
        entry.load()(verbs, service_parsers)

    config = verbs.add_parser("config", help="configuration file tools")
    config_verbs = config.add_subparsers(metavar="ACTION")
    check = config_verbs.add_parser("check", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_cmd_config_check)

    schemas = verbs.add_parser("schemas", help="write event JSON Schemas and the AsyncAPI doc")
    schemas.add_argument("--out", type=Path, required=True)
    schemas.set_defaults(handler=_cmd_schemas)
    return parser


def settings_and_config() -> tuple[Settings, HarmonetConfig]:
    """Read the settings, configure logging and load the configuration (raises ConfigError)."""
    settings = Settings()
    from services.log import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)
    return settings, load_config(settings.config_path)


def _cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    scanners = sum(len(site.scanners) for site in config.sites)
    print(f"{args.file}: OK (study {config.study}, {len(config.sites)} sites, "
          f"{scanners} scanners, {len(config.protocols)} protocols)")
    return 0


def _cmd_schemas(args: argparse.Namespace) -> int:
    from services.events import asyncapi_document, json_schemas

    args.out.mkdir(parents=True, exist_ok=True)
    for key, schema in json_schemas().items():
        (args.out / f"{key}.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    (args.out / "asyncapi.json").write_text(
        json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"
    )
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from services.runner import discover_services

    return _run(list(discover_services()), bus_name="up")


def _cmd_service(args: argparse.Namespace) -> int:
    if args.service == "receiver":
        settings = Settings()
        if settings.receiver_workers > 1:
            return _run_receiver_workers(settings.receiver_workers)
    return _run([args.service], bus_name=args.service)


def _run(names: list[str], *, bus_name: str, serve_metrics: bool = True) -> int:
    try:
        settings, config = settings_and_config()
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    from services import metrics
    from services.runner import build_context, discover_services, run_services

    available = discover_services()
    missing = [n for n in names if n not in available]
    if missing:
        print(f"service(s) not installed in this build: {', '.join(missing)}", file=sys.stderr)
        return 2
    if serve_metrics:
        metrics.serve_metrics(settings.metrics_port, data_dir=settings.data_dir)
    context = build_context(settings, config, bus_name=bus_name)
    log.info("starting", extra={"services": names, "data_dir": str(settings.data_dir)})
    asyncio.run(run_services([available[n] for n in names], context))
    return 0


def _run_receiver_workers(workers: int) -> int:
    """N receiver processes accepting on one socket bound here; metrics aggregated here.

    One listening socket shared by every worker (rather than one SO_REUSEPORT socket
    each) lets whichever worker is idle take the next association: the kernel's
    SO_REUSEPORT hash split 4 associations over 2 workers evenly only a third of the time.
    A busy worker also waits before accepting (receiver/tuning.py), so an idle one wins.
    """
    settings = Settings()
    if settings.redis_url is None:
        print("HARMONET_RECEIVER_WORKERS > 1 needs HARMONET_REDIS_URL (shared study state)",
              file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        metrics_dir = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="harmonet-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from services import metrics

        listener = stack.enter_context(_listening_socket(settings.dicom_host,
                                                         settings.dicom_port))
        metrics.serve_metrics(settings.metrics_port, data_dir=settings.data_dir)
        spawn = multiprocessing.get_context("spawn")
        children = [spawn.Process(target=_receiver_worker, args=(listener,),
                                  name=f"receiver-{i}")
                    for i in range(workers)]
        for child in children:
            child.start()

        def stop_children(signum: int, frame: object) -> None:
            # The workers hold the port: they must never outlive this parent.
            for child in children:
                if child.is_alive():
                    child.terminate()  # SIGTERM: each worker shuts down cleanly

        previous = {s: signal.signal(s, stop_children) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for child in children:
                child.join()
                stop_children(signal.SIGTERM, None)  # one worker gone: take the rest down
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for child in children:
                child.join(timeout=20)
                if child.is_alive():
                    child.kill()
                    child.join()
        return max((child.exitcode or 0) for child in children)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


def _receiver_worker(listener: socket.socket) -> None:
    from receiver.tuning import share_listening_socket

    share_listening_socket(listener)
    sys.exit(_run(["receiver"], bus_name="receiver", serve_metrics=False))


def _cmd_send(args: argparse.Namespace) -> int:
    from services.scu import send_files

    result = send_files(args.paths, host=args.host, port=args.port,
                        calling_ae=args.aet, called_ae=args.aec)
    print(f"sent {result.succeeded}/{result.total} instances "
          f"({result.failed} failed, {result.skipped} not DICOM)", file=sys.stderr)
    return 0 if result.failed == 0 and result.succeeded > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
