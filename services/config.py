"""The consortium configuration file (sites, scanners, AE titles, phantoms, protocols).

Loaded once at start-up and validated; every error names the file and line.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_ID = r"^[a-z0-9][a-z0-9_-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScannerConfig(_Model):
    id: str = Field(pattern=_ID)
    ae_titles: list[str] = Field(min_length=1)
    hosts: list[str] = Field(default_factory=list)

    @field_validator("ae_titles")
    @classmethod
    def _valid_ae_titles(cls, titles: list[str]) -> list[str]:
        for title in titles:
            if not 1 <= len(title) <= 16 or not title.isascii() or "\\" in title:
                raise ValueError(f"AE title {title!r} must be 1-16 ASCII characters, no backslash")
            if title != title.strip():
                raise ValueError(f"AE title {title!r} has leading or trailing spaces")
        return titles

    @field_validator("hosts")
    @classmethod
    def _valid_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            ipaddress.ip_network(host, strict=False)  # raises ValueError with a clear message
        return hosts

    def accepts_host(self, address: str) -> bool:
        if not self.hosts:
            return True
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(host, strict=False) for host in self.hosts)


class SiteConfig(_Model):
    id: str = Field(pattern=_ID)
    scanners: list[ScannerConfig] = Field(min_length=1)
    protocol: str | None = Field(default=None, description="protocol id; default: the first")


class PhantomRules(_Model):
    patient_name: str = "(?i)phantom|fbirn|acr"

    @field_validator("patient_name")
    @classmethod
    def _valid_regex(cls, pattern: str) -> str:
        return _regex(pattern)


class Expectation(_Model):
    value: Any
    tolerance: float | str | None = None

    @field_validator("tolerance")
    @classmethod
    def _valid_tolerance(cls, tolerance: float | str | None) -> float | str | None:
        if isinstance(tolerance, str):
            if not re.fullmatch(r"\d+(\.\d+)?%", tolerance.strip()):
                raise ValueError(f"tolerance {tolerance!r}: a number, or a percentage like '1%'")
        elif tolerance is not None and tolerance < 0:
            raise ValueError("tolerance must not be negative")
        return tolerance


class SeriesRule(_Model):
    type: str = Field(pattern=_ID)
    match: dict[str, str] = Field(default_factory=dict)
    severity: Literal["exclude", "warning"] = "exclude"
    expect: dict[str, Expectation] = Field(default_factory=dict)
    required: bool = Field(
        default=False, description="every (non-phantom) visit must contain this series type"
    )

    @field_validator("match")
    @classmethod
    def _valid_patterns(cls, match: dict[str, str]) -> dict[str, str]:
        for pattern in match.values():
            _regex(pattern)
        return match


class ProtocolOverride(_Model):
    """A site's or a scanner's exception to one series type's expectations."""

    type: str = Field(pattern=_ID)
    site: str | None = None
    scanner: str | None = None
    severity: Literal["exclude", "warning"] | None = None
    expect: dict[str, Expectation] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _targets_something(self) -> ProtocolOverride:
        if self.site is None and self.scanner is None:
            raise ValueError("an override names a site or a scanner")
        return self


class ProtocolConfig(_Model):
    id: str = Field(pattern=_ID)
    series: list[SeriesRule] = Field(default_factory=list)
    overrides: list[ProtocolOverride] = Field(default_factory=list)

    @model_validator(mode="after")
    def _overrides_name_known_types(self) -> ProtocolConfig:
        types = {rule.type for rule in self.series}
        for override in self.overrides:
            if override.type not in types:
                raise ValueError(f"override for unknown series type {override.type!r}")
        return self


class HarmonetConfig(_Model):
    study: str = Field(min_length=1)
    sites: list[SiteConfig] = Field(min_length=1)
    phantoms: PhantomRules = Field(default_factory=PhantomRules)
    protocols: list[ProtocolConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> HarmonetConfig:
        _unique("site id", [site.id for site in self.sites])
        _unique("scanner id", [s.id for site in self.sites for s in site.scanners])
        _unique(
            "AE title", [ae for site in self.sites for s in site.scanners for ae in s.ae_titles]
        )
        _unique("protocol id", [p.id for p in self.protocols])
        protocol_ids = {p.id for p in self.protocols}
        for site in self.sites:
            if site.protocol is not None and site.protocol not in protocol_ids:
                raise ValueError(f"site {site.id!r} names unknown protocol {site.protocol!r}")
        return self

    def protocol_for_site(self, site_id: str) -> ProtocolConfig | None:
        """The protocol a site scans by: its own `protocol`, else the first one."""
        site = next((s for s in self.sites if s.id == site_id), None)
        wanted = site.protocol if site is not None else None
        if wanted is None:
            return self.protocols[0] if self.protocols else None
        return next(p for p in self.protocols if p.id == wanted)

    def scanner_for_ae(self, ae_title: str) -> ScannerRef | None:
        """The site and scanner that own a calling AE title, if any."""
        for site in self.sites:
            for scanner in site.scanners:
                if ae_title in scanner.ae_titles:
                    return ScannerRef(site=site.id, scanner=scanner)
        return None

    def is_phantom_name(self, patient_name: str) -> bool:
        return re.search(self.phantoms.patient_name, patient_name) is not None


@dataclass(frozen=True)
class ScannerRef:
    site: str
    scanner: ScannerConfig


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


def _unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)


class ConfigError(Exception):
    """An invalid configuration file; `errors` are `file:line: message` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_config(path: Path | None) -> HarmonetConfig:
    """Load and validate `path`, or the built-in demo configuration when None."""
    if path is None:
        text = resources.files("services").joinpath("demo-config.yaml").read_text()
        return parse_config(text, source="<built-in demo config>")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str) -> HarmonetConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{source}{line}: invalid YAML: {exc}"]) from exc
    if root is None:
        raise ConfigError([f"{source}:1: the file is empty"])
    lines = _line_index(root)
    data = yaml.safe_load(text)
    try:
        return HarmonetConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format(source, lines, err) for err in exc.errors()]) from exc


def _line_index(
    node: yaml.Node, path: tuple[str | int, ...] = ()
) -> dict[tuple[str | int, ...], int]:
    """Map each key path (('sites', 0, 'id')) to the 1-based line where it is written."""
    index = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            index.update(_line_index(value_node, child))
            index[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            index.update(_line_index(item, (*path, position)))
    return index


def _format(source: str, lines: dict[tuple[str | int, ...], int], error: Any) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(part) for part in loc) or "(top level)"
    probe = loc
    while probe not in lines and probe:
        probe = probe[:-1]
    line = lines.get(probe, 1)
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{source}:{line}: {where}: {message}"
