# syntax=docker/dockerfile:1
# One image for every HarmoNet service: `harmonet <verb>` (receiver, compliance, qc,
# harmonize, registry; the Kubernetes Deployments pass the verb as args).
#   docker build -t ghcr.io/harmonet/harmonet:0.1.0 .
# DCMTK is not needed at runtime (the receiver is pynetdicom); tests use it, not the image.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/harmonet
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY receiver ./receiver
COPY compliance_service ./compliance_service
COPY qc_service ./qc_service
COPY harmonize_service ./harmonize_service
COPY registry ./registry
# A wheel install (not editable): the image carries no source tree, only site-packages.
RUN /opt/harmonet/bin/pip install --upgrade pip \
 && /opt/harmonet/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="HarmoNet" \
      org.opencontainers.image.description="Multi-site MRI ingest, compliance, QC, harmonization and registry" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 harmonet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin harmonet \
 && mkdir -p /data /etc/harmonet \
 && chown 10001:10001 /data
COPY --from=build /opt/harmonet /opt/harmonet
# Read-only root file system in Kubernetes: no .pyc writes, temp files under /tmp (emptyDir).
ENV PATH=/opt/harmonet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HARMONET_DATA_DIR=/data
WORKDIR /data
VOLUME ["/data"]
# DICOM, registry HTTP, Prometheus metrics (+ /healthz, /readyz)
EXPOSE 11112 8000 9100
USER 10001:10001
ENTRYPOINT ["harmonet"]
CMD ["up"]
