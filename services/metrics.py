"""Prometheus metrics of every HarmoNet process (names are a contract: ARCHITECTURE.md).

Labels stay low-cardinality: site, scanner, metric, result, reason, service,
type, stage; never a patient or study id. Processes with several workers use
prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`).
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

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


def serve_metrics(port: int, *, host: str = "0.0.0.0") -> None:
    """Expose /metrics on `port` (aggregating worker processes in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host, registry=REGISTRY)
