"""Prometheus metrics of every HarmoNet process (names are a contract: ARCHITECTURE.md).

Labels stay low-cardinality: site, scanner, metric, result, reason, service,
type, stage; never a patient or study id. Processes with several workers use
prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

RECEIVER_INSTANCES_STORED = Counter(
    "harmonet_receiver_instances_stored", "DICOM instances durably stored (duplicates excluded)",
    ["site", "scanner"],
)
RECEIVER_BYTES_STORED = Counter(
    "harmonet_receiver_bytes_stored", "Bytes of pseudonymised DICOM durably stored",
    ["site", "scanner"],
)
RECEIVER_DUPLICATES = Counter(
    "harmonet_receiver_duplicates", "Instances received again with identical content",
    ["site", "scanner"],
)
RECEIVER_QUARANTINED = Counter(
    "harmonet_receiver_quarantined",
    "Instances whose SOP Instance UID was already stored with different content",
    ["site", "scanner"],
)
RECEIVER_REJECTED = Counter(
    "harmonet_receiver_rejected", "Associations or instances refused, by reason", ["reason"],
)
RECEIVER_ASSOCIATIONS = Counter(
    "harmonet_receiver_associations", "Association requests, by result", ["result"],
)
STUDIES_RECEIVED = Counter(
    "harmonet_studies_received", "study.received events published", ["site", "scanner"],
)
COMPLIANCE_SERIES = Counter(
    "harmonet_compliance_series", "Series checked against the protocol",
    ["site", "scanner", "result"],
)
QC_SERIES = Counter("harmonet_qc_series", "Series measured by QC", ["site", "scanner", "result"])
HARMONIZE_STUDIES = Counter(
    "harmonet_harmonize_studies", "study.harmonized events published, by status",
    ["site", "status"],
)
PHANTOM_METRIC = Gauge(
    "harmonet_phantom_metric", "Latest phantom stability metric", ["site", "scanner", "metric"],
    multiprocess_mode="mostrecent",
)
SCANNER_STABILITY_ZSCORE = Gauge(
    "harmonet_scanner_stability_zscore", "Control-chart z-score of a phantom metric",
    ["site", "scanner", "metric"], multiprocess_mode="mostrecent",
)
EVENTS_PUBLISHED = Counter("harmonet_events_published", "Events confirmed by the bus", ["type"])
EVENTS_CONSUMED = Counter(
    "harmonet_events_consumed", "Events handled, by outcome", ["service", "type", "result"],
)
STAGE_DURATION = Histogram(
    "harmonet_stage_duration_seconds", "Time spent in one pipeline stage", ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

REGISTRY_MISSING_SERIES = Gauge(
    "harmonet_registry_studies_missing_series",
    "Studies still missing a series their protocol requires, past the allowed delay",
    ["site"], multiprocess_mode="mostrecent",
)
REGISTRY_STUDIES_PROCESSED = Counter(
    "harmonet_registry_studies_processed", "study.processed events decided", ["site"],
)
REGISTRY_API_DENIED = Counter(
    "harmonet_registry_api_denied", "API requests refused (401/403)", ["reason"],
)


PHANTOM_CONTROL_LIMIT = Gauge(
    "harmonet_phantom_control_limit",
    "Control limits of a phantom metric's chart (bound: lower, centre, upper)",
    ["site", "scanner", "metric", "bound"], multiprocess_mode="mostrecent",
)
SCANNER_LAST_STUDY = Gauge(
    "harmonet_scanner_last_study_timestamp_seconds",
    "Unix time at which the last study.received of a scanner was published",
    ["site", "scanner"], multiprocess_mode="max",
)
COMPONENT_READY = Gauge(
    "harmonet_component_ready", "1 while a component of the process can work, 0 when not",
    ["component"], multiprocess_mode="livemin",
)
READY_METRIC = "harmonet_component_ready"
_not_ready_reasons: dict[str, str] = {}
_readiness_lock = threading.Lock()


def set_ready(component: str, ready: bool, reason: str | None = None) -> None:
    """Mark `component` (e.g. "receiver_storage") ready or not; /readyz answers 503 while any
    component of the process (or of any receiver worker process) is not ready."""
    with _readiness_lock:
        was_ready = component not in _not_ready_reasons
        if ready:
            _not_ready_reasons.pop(component, None)
        else:
            _not_ready_reasons[component] = reason or "not ready"
        COMPONENT_READY.labels(component=component).set(1 if ready else 0)
    if was_ready != ready:
        log.warning("readiness changed", extra={"component": component, "ready": ready,
                                                "reason": reason})


def not_ready(registry: Collector = REGISTRY) -> dict[str, str]:
    """Components reporting not ready, with a reason (workers report no reason)."""
    found: dict[str, str] = {}
    for family in registry.collect():
        if family.name != READY_METRIC:
            continue
        for sample in family.samples:
            if sample.name == READY_METRIC and sample.value == 0:
                component = sample.labels.get("component", "")
                with _readiness_lock:
                    found[component] = _not_ready_reasons.get(component, "not ready")
    return found


class DataDirCollector(Collector):
    """Free and total bytes of the file system holding the data dir, read at scrape time."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir

    def collect(self) -> Iterator[Metric]:
        try:
            usage = shutil.disk_usage(self._data_dir)
        except OSError:
            return  # no sample beats a wrong one; alerts use absent() where it matters
        yield GaugeMetricFamily("harmonet_data_dir_free_bytes",
                                "Bytes available to HarmoNet on the data dir's file system",
                                value=usage.free)
        yield GaugeMetricFamily("harmonet_data_dir_size_bytes",
                                "Size in bytes of the data dir's file system", value=usage.total)


class _HealthAndMetricsHandler(MetricsHandler):
    """/metrics as prometheus-client serves it, plus /healthz (alive) and /readyz."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._plain(200, "ok\n")
        elif path == "/readyz":
            failing = not_ready(self.registry)
            body = "".join(f"{c}: {r}\n" for c, r in sorted(failing.items()))
            self._plain(503 if failing else 200, body or "ready\n")
        else:
            super().do_GET()

    def _plain(self, status: int, body: str) -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


def serve_metrics(
    port: int, *, host: str = "0.0.0.0", data_dir: Path | None = None
) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on `port` from a daemon thread (aggregating
    worker processes in multiprocess mode); `data_dir` adds the data-dir disk gauges."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if data_dir is not None:
        registry.register(DataDirCollector(data_dir))
    handler = _HealthAndMetricsHandler.factory(registry)
    server_class = _MetricsServer6 if ":" in host else _MetricsServer
    server = server_class((host, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
