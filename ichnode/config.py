"""Settings: defaults < ``config/ichnode.toml`` (or ``--config``) < ``ICHNODE_*`` env < CLI flags.

One :class:`Settings` object, validated once at start. Nested sections are TOML tables
(``[http]``, ``[selection]``, ``[[destinations]]``) and ``ICHNODE_SECTION__KEY`` variables.
An invalid value is a :class:`~ichnode.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ichnode.errors import ConfigError
from ichnode.report_kind import ReportKind

#: Where ``ichnode`` looks for a config file when ``--config`` is not given.
DEFAULT_CONFIG_FILE = Path("config/ichnode.toml")
CONFIG_ENV = "ICHNODE_CONFIG"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, ≤ 16


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not _AE_TITLE.match(value) or not value:
        raise ValueError("an AE title is 1-16 printable characters without backslash")
    return value


def split_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → ``(host, port)``; ValueError otherwise."""
    host, sep, port = bind.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8080), got {bind!r}")
    return host, int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SelectionSettings(_Section):
    """Which received CT slices are scored; the others are recorded as skipped with a reason."""

    image_type_exclude: list[str] = Field(
        default_factory=lambda: ["LOCALIZER"],
        description="Skip images whose ImageType contains any of these values.",
    )
    image_type_include: list[str] = Field(
        default_factory=list,
        description="If not empty, score only images whose ImageType contains one of these.",
    )
    series_description_exclude: str = Field(
        r"(?i)\b(scout|topogram|localizer|surview|scanogram|dose|screen ?save|mip|3d)\b",
        description="Regex: skip series whose SeriesDescription matches.",
    )
    protocol_name_exclude: str = Field(
        r"(?i)\b(chest|thorax|abdomen|pelvis|spine|cardiac|lung)\b",
        description="Regex: skip series whose ProtocolName matches.",
    )
    body_part_include: str = Field(
        r"(?i)^(|head|brain|skull|headneck|head_neck|cranium)$",
        description="Regex BodyPartExamined must match (empty value allowed by default).",
    )
    orientation_tolerance_deg: float = Field(
        20.0, ge=0, le=90, description="Max angle between the slice normal and the z axis."
    )
    skip_duplicate_positions: bool = Field(
        True, description="Skip a slice at the same z as an already received one of its series."
    )

    @field_validator("series_description_exclude", "protocol_name_exclude", "body_part_include")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class HTTPSettings(_Section):
    """The HTTP API and worklist page."""

    enabled: bool = True
    bind: str = "127.0.0.1:8080"
    token: str | None = None
    show_patient_identifiers: bool = Field(
        True, description="Show patient name/ID and accession on the pages (inside the hospital)."
    )
    allow_remote_without_token: bool = Field(
        False, description="Allow a non-loopback bind without a token (not recommended)."
    )
    cert: Path | None = Field(
        None,
        description="PEM certificate (chain) of the HTTP side: with http.key set, the API, "
        "worklist and DICOMweb are served over HTTPS only (TLS 1.2 or later).",
    )
    key: Path | None = Field(None, description="PEM private key of http.cert.")
    max_stow_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="Largest STOW-RS request body (413 past it); it waits in a scratch file on "
        "the store's disk, not in memory.",
    )

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        split_bind(value)
        return value.strip()

    @model_validator(mode="after")
    def _cert_and_key(self) -> HTTPSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("http.cert and http.key go together (HTTPS needs both)")
        return self


class TLSSettings(_Section):
    """DICOM TLS for the listening port."""

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = False
    #: PEM certificate revocation list(s) of ``ca``: a revoked client certificate is refused.
    #: Reloaded when the file changes (as are cert, key and ca). OpenSSL refuses every client
    #: once the CRL is past its next update, so put a new one in place before then.
    crl: Path | None = None


class Destination(_Section):
    """A node that receives ichnode's report objects: over DIMSE (C-STORE to ``ae_title`` at
    ``host``:``port``, the default) or over DICOMweb (``kind = "dicomweb"``: STOW-RS to
    ``url``, with an optional bearer ``token`` or ``username``/``password``; an ``https`` URL
    is verified against ``tls.ca`` or the system CAs)."""

    name: str
    kind: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: str = ""
    host: str = ""
    port: int = Field(0, ge=0, le=65535)
    url: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    objects: list[ReportKind] = Field(default_factory=lambda: [ReportKind.SR, ReportKind.SUMMARY])
    tls: bool = False

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value) if value else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_http_url(value) if value is not None else None

    @model_validator(mode="after")
    def _address(self) -> Destination:
        if self.kind == "dicomweb":
            if not self.url:
                raise ValueError(f"destination {self.name!r}: a dicomweb destination needs url")
            if self.token and self.username:
                raise ValueError(f"destination {self.name!r}: token or username, not both")
        elif not (self.ae_title and self.host and self.port):
            raise ValueError(f"destination {self.name!r}: needs ae_title, host and port")
        return self


def _check_http_url(value: str) -> str:
    value = value.strip()
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


class NotifyTarget(_Section):
    """A receiver of result notifications: an HL7 v2 ORU^R01 over MLLP (``kind = "hl7v2"``:
    ``host``, ``port``, ``sending_application``, ``receiving_application``) or a FHIR R4
    DiagnosticReport POSTed as JSON (``kind = "fhir"``: ``url``, optional bearer ``token``).
    ``when``: every result version (``always``) or flagged ones only (``flagged``)."""

    name: str = Field(min_length=1, max_length=64)
    kind: Literal["hl7v2", "fhir"]
    when: Literal["flagged", "always"] = "flagged"
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    sending_application: str = "ICHNODE"
    receiving_application: str = "RIS"
    url: str | None = None
    token: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_http_url(value) if value is not None else None

    @model_validator(mode="after")
    def _address(self) -> NotifyTarget:
        if self.kind == "hl7v2" and not (self.host and self.port):
            raise ValueError(f"notify {self.name!r}: an hl7v2 receiver needs host and port")
        if self.kind == "fhir" and not self.url:
            raise ValueError(f"notify {self.name!r}: a fhir receiver needs url")
        return self


class Settings(BaseSettings):
    """Every setting ichnode has, with a default that works on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="ICHNODE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # -- DICOM listener
    ae_title: str = "ICHNODE"
    bind: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(10, ge=1)
    receivers: int = Field(
        0,
        ge=0,
        description="DICOM receiver processes `serve` runs on its one listening socket "
        "(new associations go to the least busy); 0 = one per core, 1 = the node's own "
        "process only. Association limits count per receiver.",
    )
    #: Association requests one peer address may make per minute (0: no limit); more are
    #: rejected as temporary congestion, so a looping or hostile sender cannot flood the node.
    max_associations_per_minute: int = Field(0, ge=0)
    max_pdu: int = Field(262144, ge=0, description="Max PDU we advertise (0 = unlimited).")
    fast_store: bool = Field(
        True,
        description="Answer C-STORE requests in the association's reader thread instead of "
        "through pynetdicom's message queues (node.fast_store); false = pynetdicom's path "
        "for every message.",
    )
    accept_other_objects: bool = Field(
        True, description="Accept non-CT storage objects (recorded as skipped) instead of failing."
    )
    require_called_ae: bool = True
    calling_ae_allow: list[str] = Field(default_factory=list)
    calling_ae_hosts: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Calling AE title = addresses or networks it may connect from (CIDR).",
    )
    max_instance_bytes: int = Field(256 * 1024 * 1024, ge=1)
    min_free_bytes: int = Field(512 * 1024 * 1024, ge=0)
    network_timeout: float = Field(60.0, gt=0)
    idle_timeout: float = Field(120.0, gt=0)
    tls: TLSSettings = Field(default_factory=TLSSettings)

    # -- storage
    db_url: str = "sqlite:///var/ichnode.db"
    store: Path = Path("var/store")
    auto_upgrade: bool = Field(True, description="Bring the schema up to date at start.")
    audit_retention_days: int = Field(
        0, ge=0, description="Remove association audit rows older than this; 0 = keep all."
    )

    # -- inference
    model: Path | None = Field(None, description="Checkpoint; empty = the bundled demo model.")
    model_reload: bool = Field(
        True,
        description="Serve a new checkpoint renamed over `model` without a restart "
        "(checked every 2 s).",
    )
    device: str = "auto"
    workers: int = Field(1, ge=0)
    inference_process: bool = Field(
        True,
        description="Run the workers in a child process of `serve`, so scoring never "
        "competes with the DICOM receiver for the GIL (false: threads in the node's process).",
    )
    inference_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower the inference process's CPU priority is than the "
        "receivers' (POSIX nice): when both want the cores, receiving goes first and the "
        "model catches up between studies (0: equal).",
    )
    inference_defer: float = Field(
        3.0,
        ge=0,
        description="Before scoring a backlog the workers wait, while instances keep "
        "arriving, for a pause in arrivals (0.25 s), at most this many seconds and at most "
        "half of stable_seconds, so that receiving goes first; then they score until the "
        "queue is empty (0: score as they arrive).",
    )
    batch_size: int = Field(16, ge=1, le=1024)
    lease_seconds: float = Field(120.0, gt=0)
    torch_threads: int = Field(0, ge=0, description="0 = torch's default.")
    amp: bool = Field(False, description="Mixed precision (float16 autocast) on CUDA.")

    # -- studies
    stable_seconds: float = Field(10.0, ge=0)

    # -- results delivery
    destinations: list[Destination] = Field(default_factory=list)
    return_to_sender: dict[str, int] = Field(default_factory=dict)
    delivery_max_attempts: int = Field(10, ge=1)
    delivery_backoff_seconds: float = Field(5.0, gt=0)
    #: The longest wait between two tries (the backoff doubles up to it).
    delivery_backoff_max_seconds: float = Field(3600.0, gt=0)
    #: Receivers of result notifications (HL7 v2, FHIR), ``[[notify]]`` tables.
    notify: list[NotifyTarget] = Field(default_factory=list)

    selection: SelectionSettings = Field(default_factory=SelectionSettings)  # type: ignore[arg-type]
    http: HTTPSettings = Field(default_factory=HTTPSettings)  # type: ignore[arg-type]

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("calling_ae_allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]

    @field_validator("calling_ae_hosts")
    @classmethod
    def _hosts(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        out = {}
        for title, networks in value.items():
            for net in networks:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ValueError(f"{net!r} is not an IP address or network") from None
            out[_check_ae_title(title)] = list(networks)
        return out

    @field_validator("notify", "destinations")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [item.name for item in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"names must be unique; repeated: {', '.join(twice)}")
        return value

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def config_path(config: str | Path | None = None) -> Path | None:
    """The config file in effect: ``--config``, else ``$ICHNODE_CONFIG``, else the default."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    if os.environ.get(CONFIG_ENV):
        return config_path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        parts.append(f"{key}: {msg}")
    return "invalid setting " + "; ".join(parts)


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings; ``overrides`` (CLI flags) left as ``None`` do not override."""
    path = config_path(config)
    flags = {k: v for k, v in overrides.items() if v is not None}

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        loaded = _FileSettings(**flags) if path else Settings(**flags)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return Settings.model_validate(loaded.model_dump())
