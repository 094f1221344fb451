"""Process settings: every `HARMONET_*` environment variable, read once per process."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "harmonet", ""}


class Settings(BaseSettings):
    """One per process; handlers receive it (or the parts they need) as arguments."""

    model_config = SettingsConfigDict(env_prefix="HARMONET_", extra="ignore")

    data_dir: Path = Path("./harmonet-data")
    config: Path | None = None
    amqp_url: str | None = None
    redis_url: str | None = None
    # Namespace of this deployment's keys in a shared Redis.
    state_prefix: str = Field(default="harmonet:", min_length=1)
    database_url: str | None = None
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    dicom_host: str = "0.0.0.0"
    ae_title: str = Field(default="HARMONET", min_length=1, max_length=16)
    stable_seconds: float = Field(default=60.0, gt=0)
    api_port: int = Field(default=8000, ge=0, le=65535)
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    log_level: str = "INFO"
    log_json: bool = True

    # Keyed pseudonyms (HMAC-SHA256). Unset: a random key is created once in the data dir.
    pseudonym_key: SecretStr | None = None
    # Optional TLS for the DICOM port (TLS 1.2+). `tls_ca` set: client certificates required.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Receiver worker processes sharing the DICOM port (SO_REUSEPORT); >1 needs Redis state.
    receiver_workers: int = Field(default=1, ge=1, le=64)
    # Bus: deliveries of one message before it is dead-lettered, and consumer prefetch.
    bus_max_attempts: int = Field(default=5, ge=1)
    bus_prefetch: int = Field(default=16, ge=1)
    # Registry: API bind address, hours after which a study still missing a series its
    # protocol requires is flagged, and the default clinical data dictionary (YAML or CSV).
    api_host: str = "0.0.0.0"
    missing_scan_hours: float = Field(default=24.0, gt=0)
    clinical_dictionary: Path | None = None
    # Harmonization: what a batch is, and how many scans an unseen batch needs before its
    # location/scale are estimated (until then its studies are `pending`).
    harmonize_batch: Literal["site", "scanner", "scanner_epoch"] = "site"
    harmonize_min_site_scans: int = Field(default=25, ge=2)
    # T1w intensity standardisation written as NIfTI: nyul (once a model is installed),
    # whitestripe (per image, no model) or off.
    harmonize_intensity: Literal["nyul", "whitestripe", "off"] = "nyul"

    @field_validator("ae_title")
    @classmethod
    def _ae_title_ascii(cls, value: str) -> str:
        if not value.isascii() or "\\" in value or value.strip() != value:
            raise ValueError("AE title must be ASCII without backslash or padding")
        return value

    @field_validator("pseudonym_key")
    @classmethod
    def _refuse_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raw = value.get_secret_value()
            if raw.lower() in _PLACEHOLDER_SECRETS or len(raw) < 16:
                raise ValueError("pseudonym key is a placeholder or shorter than 16 characters")
        return value

    @property
    def embedded_state_path(self) -> Path:
        """The journal of the embedded state store (used when HARMONET_REDIS_URL is unset)."""
        return self.data_dir / "state" / "state.jsonl"

    @property
    def embedded_bus_path(self) -> Path:
        """The journal of the in-process bus (used when HARMONET_AMQP_URL is unset)."""
        return self.data_dir / "bus" / "bus.jsonl"

    @property
    def config_path(self) -> Path | None:
        """The configuration file in force: explicit, else `<data dir>/harmonet.yaml` if present."""
        if self.config is not None:
            return self.config
        default = self.data_dir / "harmonet.yaml"
        return default if default.exists() else None

    def resolved_pseudonym_key(self) -> bytes:
        """The pseudonymisation key; creates `<data dir>/secrets/pseudonym.key` (0600) once."""
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        key_file = self.data_dir / "secrets" / "pseudonym.key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = key_file.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, key_file)  # first writer wins; never replace a key in use
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return key_file.read_text().strip().encode()
