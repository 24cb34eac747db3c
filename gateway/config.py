"""Typed settings, read once at the edge from TOML plus environment overrides.

Every key can be overridden by ``SMSGW_<SECTION>_<KEY>`` (upper case), e.g.
``SMSGW_DATABASE_DSN``, ``SMSGW_REDIS_DSN``, ``SMSGW_SMPP_PASSWORD``. Components receive the
dataclass they need; nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration file or an environment override is wrong (the operator's to fix)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseConfig:
    dsn: str = "postgresql://postgres@127.0.0.1:5432/smsgw"
    min_connections: int = 2
    max_connections: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    dsn: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "smsgw:queue:send"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True, kw_only=True)
class SmppConfig:
    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = "smsgw"
    password: str = "secret"
    system_type: str = ""
    bind_mode: str = "trx"  # "trx" (one transceiver) or "tx+rx" (a transmitter and a receiver)
    window: int = 10  # outstanding submit_sm per bind
    enquire_link_s: float = 30.0
    response_timeout_s: float = 30.0
    bind_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    throttle_pause_s: float = 1.0  # pause after ESME_RTHROTTLED / ESME_RMSGQFUL
    source_ton: int = 5  # alphanumeric sender
    source_npi: int = 0
    dest_ton: int = 1  # international
    dest_npi: int = 1  # E.164
    registered_delivery: int = 1  # ask for a receipt
    # Receipt matching: "auto" also tries the id read in the other base (hex <-> decimal), for
    # carriers that answer submit_sm in one base and write receipts in the other; "exact"
    # matches the id only as written.
    message_id_format: str = "auto"

    def __post_init__(self) -> None:
        if self.bind_mode not in ("trx", "tx+rx"):
            raise ConfigError(f"smpp.bind_mode must be 'trx' or 'tx+rx', not {self.bind_mode!r}")
        if self.message_id_format not in ("auto", "exact"):
            raise ConfigError("smpp.message_id_format must be 'auto' or 'exact', "
                              f"not {self.message_id_format!r}")
        if not 1 <= self.window <= 1000:
            raise ConfigError(f"smpp.window must be between 1 and 1000, not {self.window}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendingConfig:
    default_sender: str = "CSKH"
    hotline: str = "18001090"  # {{ hotline }} in every template
    # {{ refusal }}: how to refuse advertising, ending every advertising template (Decree 91).
    refusal: str = "Tu choi QC soan TC gui 1234"
    region: str = "VN"
    max_attempts: int = 5
    # What to do with a submit_sm that may have reached the SMSC but whose response was never
    # recorded (connection lost, response timeout, worker killed): "resend" (at-least-once; the
    # subscriber may get it twice) or "fail" (at-most-once; recorded as failed).
    ambiguous_policy: str = "resend"
    sweep_interval_s: float = 5.0
    stale_queued_s: float = 30.0  # queued rows older than this are re-enqueued
    stale_submitting_s: float = 120.0  # submitting rows older than this are ambiguous
    batch_size: int = 200  # message ids per arq job from the sweeper
    worker_max_jobs: int = 500

    def __post_init__(self) -> None:
        if self.ambiguous_policy not in ("resend", "fail"):
            raise ConfigError(
                "sending.ambiguous_policy must be 'resend' or 'fail', "
                f"not {self.ambiguous_policy!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = "INFO"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    smpp: SmppConfig = field(default_factory=SmppConfig)
    sending: SendingConfig = field(default_factory=SendingConfig)
    log: LogConfig = field(default_factory=LogConfig)


_SECTIONS: Mapping[str, type[Any]] = typing.get_type_hints(Config)


def _coerce(section: str, key: str, raw: Any, kind: Any, source: str) -> Any:
    kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, kind)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is float and isinstance(raw, int | float | str):
            return float(raw)
        if kind is int and isinstance(raw, int | str) and not isinstance(raw, bool):
            return int(raw)
        if kind is str:
            return str(raw)
    except ValueError:
        pass
    raise ConfigError(f"{source}: {section}.{key} must be {getattr(kind, '__name__', kind)}, "
                      f"got {raw!r}")


def load_config(path: str | Path | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read TOML at ``path`` (None: defaults only) and apply ``SMSGW_*`` overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist; copy config.example.toml") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) in {path}: {', '.join(sorted(unknown))}")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = dict(data.get(name, {}))
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - fields
        if bad:
            raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(bad))}")
        for key in list(values):
            values[key] = _coerce(name, key, values[key], hints[key], str(path))
        for key in fields:
            var = f"SMSGW_{name}_{key}".upper()
            if var in env:
                values[key] = _coerce(name, key, env[var], hints[key], f"environment {var}")
        sections[name] = cls(**values)
    return Config(**sections)


def describe_defaults() -> dict[str, dict[str, Any]]:
    """Every section and key with its default (used to check config.example.toml)."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in _SECTIONS.items():
        inst = cls()
        out[name] = {f.name: getattr(inst, f.name) for f in dataclasses.fields(cls)}
    return out

