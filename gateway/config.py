"""Typed settings, read once at the edge from TOML plus environment overrides.

Every key can be overridden by ``SMSGW_<SECTION>_<KEY>`` (upper case), e.g.
``SMSGW_DATABASE_DSN``, ``SMSGW_REDIS_DSN``, ``SMSGW_SMPP_PASSWORD``. Components receive the
dataclass they need; nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit


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
    queue_name: str = "smsgw:queue:send"  # care and transactional messages (the fast lane)
    bulk_queue_name: str = "smsgw:queue:bulk"  # advertising and broadcasts


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    key_rate_per_s: float = 50.0  # requests/s per API key unless the key sets its own; 0 = none
    key_burst: int = 100  # requests a key may make at once above that rate
    metrics_public: bool = True  # GET /metrics without an API key; false: needs metrics:read

    def __post_init__(self) -> None:
        if not 0 <= self.key_rate_per_s < float("inf"):
            raise ConfigError("http.key_rate_per_s must be ≥ 0 (0 = no limit), "
                              f"not {self.key_rate_per_s!r}")
        if self.key_burst < 1:
            raise ConfigError(f"http.key_burst must be at least 1, not {self.key_burst}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SmppConfig:
    """One SMSC link. ``[smpp]`` gives the defaults; each ``[[smsc]]`` entry overrides them."""

    name: str = "default"
    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = "smsgw"
    password: str = "secret"
    system_type: str = ""
    bind_mode: str = "trx"  # "trx" (one transceiver) or "tx+rx" (a transmitter and a receiver)
    binds: int = 1  # binds (transceivers, or transmitter+receiver pairs) on this link
    window: int = 10  # outstanding submit_sm per bind
    tps: float = 0.0  # segments per second for the whole link; 0 = no limit of ours
    account: str = ""  # carrier account shared by links/processes; "" = the link's name
    account_tps: float = 0.0  # segments/s for the account, shared via Redis; 0 = none
    default_sender: str = ""  # sender for messages routed here without one; "" = sending's
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str = ""
    # SMPP statuses after which the message is tried on the next link of its route
    failover_statuses: tuple[int, ...] = (0x0A, 0x0B, 0x0D, 0x0F)
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
    # Receipt matching: "exact" = receipts carry the id as submit_sm_resp gave it; "hex" =
    # receipts write it in hex while responses are decimal; "decimal" = the other way round;
    # "auto" = try the id as written and read in the other base.
    message_id_format: str = "auto"

    def __post_init__(self) -> None:
        if self.bind_mode not in ("trx", "tx+rx"):
            raise ConfigError(f"smpp.bind_mode must be 'trx' or 'tx+rx', not {self.bind_mode!r}")
        if self.message_id_format not in ("auto", "exact", "hex", "decimal"):
            raise ConfigError("smpp.message_id_format must be 'auto', 'exact', 'hex' or "
                              f"'decimal', not {self.message_id_format!r}")
        if self.binds < 1:
            raise ConfigError(f"smsc {self.name!r}: binds must be at least 1")
        if self.tps < 0 or self.account_tps < 0:
            raise ConfigError(f"smsc {self.name!r}: tps and account_tps must be ≥ 0")
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
    # Share of the send capacity (messages claimed and not yet answered) that advertising and
    # broadcast traffic may use; the rest is kept for care/transactional messages.
    bulk_capacity_share: float = 0.75
    receipt_timeout_s: float = 172800.0  # no receipt after this → expired (with an event)
    mo_reassembly_timeout_s: float = 600.0  # a multipart MO still missing parts is then stored

    def __post_init__(self) -> None:
        if self.ambiguous_policy not in ("resend", "fail"):
            raise ConfigError(
                "sending.ambiguous_policy must be 'resend' or 'fail', "
                f"not {self.ambiguous_policy!r}")


#: Every event type the gateway accepts.
EVENT_TYPES: tuple[str, ...] = (
    "bill_issued", "payment_due", "overdue", "suspended_one_way", "suspended_two_way",
    "payment_received", "usage_high", "package_expiring", "incident", "incident_fixed",
)

_TEMPLATE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]*")


def _default_templates() -> Mapping[str, str]:
    return MappingProxyType({t: t for t in EVENT_TYPES})


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsConfig:
    """``[events]``: the template each event type is sent with.

    ``templates`` may name only some types; the others keep their same-named template.
    """

    templates: Mapping[str, str] = field(default_factory=_default_templates)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.templates) - set(EVENT_TYPES))
        if unknown:
            raise ConfigError(f"events.templates: unknown event type(s) {', '.join(unknown)}; "
                              f"the types are {', '.join(EVENT_TYPES)}")
        for event_type, template in self.templates.items():
            if not isinstance(template, str) or not _TEMPLATE_NAME_RE.fullmatch(template):
                raise ConfigError(f"events.templates.{event_type}: {template!r} is not a "
                                  "template name (lower-case letters, digits and '_')")
        merged = {t: self.templates.get(t, t) for t in EVENT_TYPES}
        object.__setattr__(self, "templates", MappingProxyType(merged))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> EventsConfig:
        """From the ``[events]`` TOML table, e.g. ``{"templates": {"overdue": "overdue_v2"}}``."""
        unknown = sorted(set(raw) - {"templates"})
        if unknown:
            raise ConfigError(f"unknown key(s) in [events]: {', '.join(unknown)}")
        templates = raw.get("templates", {})
        if not isinstance(templates, Mapping):
            raise ConfigError("events.templates must be a table of event type = template name")
        return cls(templates=dict(templates))


@dataclass(frozen=True, slots=True, kw_only=True)
class GreetingsConfig:
    """Birthday and holiday greetings (arq cron jobs in the care lane's worker)."""

    enabled: bool = True
    timezone: str = "Asia/Ho_Chi_Minh"
    send_at: str = "08:00"  # local HH:MM; nothing is sent before it, the rest of the day catches up
    batch_size: int = 500
    concurrency: int = 4
    retry_after_s: float = 120.0
    care_days: tuple[str, ...] = ("tet", "trung_thu", "8_3", "20_10", "20_11", "22_12")
    vip_care_days: tuple[str, ...] = ()  # of care_days: sent only to vip_tiers
    vip_tiers: tuple[str, ...] = ("Vàng", "Kim cương")

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"greetings.timezone {self.timezone!r} is not a time zone") from exc
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", self.send_at):
            raise ConfigError(f"greetings.send_at must be HH:MM (24 h), not {self.send_at!r}")
        unknown = set(self.vip_care_days) - set(self.care_days)
        if unknown:
            raise ConfigError(f"greetings.vip_care_days {sorted(unknown)} are not in care_days")


#: arq retries a job at most this many times (jobs/worker.py max_tries)
MAX_ATTEMPTS_LIMIT = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingConfig:
    """``KT CUOC``: where the subscriber's bill comes from."""

    endpoint: str = ""  # billing HTTP API (GET ?msisdn=…); "" = the latest bill in Postgres
    timeout_s: float = 3.0  # then the reply falls back to Postgres, then to a polite apology

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"billing.endpoint must be an http(s) URL, not {self.endpoint!r}")
        if self.timeout_s <= 0:
            raise ConfigError("billing.timeout_s must be positive")


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """``[webhook]``: where confirmed service requests go (``SMSGW_WEBHOOK_SECRET`` etc.).

    ``url`` empty = no back office configured: requests stay 'confirmed'. The retry
    delay after failed attempt n is ``min(retry_max_s, retry_base_s * 2**n)``.
    """

    url: str = ""
    secret: str = ""
    timeout_s: float = 5.0
    max_attempts: int = 8
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"webhook.url must be an http(s) URL, not {self.url!r}")
            if not self.secret:
                raise ConfigError("webhook.secret is required when webhook.url is set "
                                  "(SMSGW_WEBHOOK_SECRET)")
        if self.timeout_s <= 0:
            raise ConfigError(f"webhook.timeout_s must be > 0, not {self.timeout_s}")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ConfigError(f"webhook.max_attempts must be between 1 and "
                              f"{MAX_ATTEMPTS_LIMIT}, not {self.max_attempts}")
        if self.retry_base_s < 0 or self.retry_max_s < 0:
            raise ConfigError("webhook.retry_base_s and retry_max_s must be ≥ 0")

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def retry_delay_s(self, attempts: int) -> float:
        """How long to wait after ``attempts`` failed posts."""
        return float(min(self.retry_max_s, self.retry_base_s * 2 ** min(attempts, 32)))


@dataclass(frozen=True, slots=True, kw_only=True)
class KeywordsConfig:
    """``[keywords]``: the SMS keyword service (table file, reply limits)."""

    file: str = "keywords.toml"  # relative paths are relative to the repository root
    reply_limit: int = 5  # replies per number per reply_window_s (cuts auto-responder loops)
    reply_window_s: float = 600.0
    unknown_help_every_s: float = 3600.0  # help for unrecognised messages, per number
    claim_stale_s: float = 300.0  # an unfinished handling older than this may be taken over

    def __post_init__(self) -> None:
        if not self.file:
            raise ConfigError("keywords.file must name the keyword table")
        if self.reply_limit < 0:
            raise ConfigError(f"keywords.reply_limit must be ≥ 0, not {self.reply_limit}")
        for name in ("reply_window_s", "unknown_help_every_s", "claim_stale_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"keywords.{name} must be positive")

    @property
    def path(self) -> Path:
        from gateway import PROJECT_ROOT

        path = Path(self.file)
        return path if path.is_absolute() else PROJECT_ROOT / path


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"  # "text" or "json" (one JSON object per line)

    def __post_init__(self) -> None:
        if self.format not in ("text", "json"):
            raise ConfigError(f"log.format must be 'text' or 'json', not {self.format!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionConfig:
    """``[retention]``: how long message bodies and MO text are kept; rows are kept for ever."""

    body_days: int = 180  # blank texts older than this many days; 0 = keep for ever
    interval_s: float = 3600.0  # how often `smsgw serve` purges

    def __post_init__(self) -> None:
        if self.body_days < 0:
            raise ConfigError(f"retention.body_days must be ≥ 0, not {self.body_days}")
        if self.interval_s <= 0:
            raise ConfigError("retention.interval_s must be positive")


_HHMM_RE = re.compile(r"([01][0-9]|2[0-4]):([0-5][0-9])")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertisingConfig:
    """``[advertising]``: the send-time rules for advertising SMS (Decree 91/2020, Circular
    22/2021). The law sets 07:00–22:00 and 3 per 24 h; an operator may only be stricter."""

    timezone: str = "Asia/Ho_Chi_Minh"
    window_start: str = "07:00"  # advertising is submitted only from ...
    window_end: str = "22:00"  # ... until (exclusive); outside, it waits for the next window
    # at most this many advertising SMS per number per rolling 24 h per advertiser
    max_per_24h: int = 3

    def __post_init__(self) -> None:
        for name in ("window_start", "window_end"):
            value = getattr(self, name)
            if not _HHMM_RE.fullmatch(value) or value > "24:00":
                raise ConfigError(f"advertising.{name} must be HH:MM (00:00–24:00), "
                                  f"not {value!r}")
        if not self.window_start < self.window_end:
            raise ConfigError("advertising.window_start must be before window_end "
                              f"({self.window_start} – {self.window_end})")
        if not 1 <= self.max_per_24h <= 3:
            raise ConfigError("advertising.max_per_24h must be 1, 2 or 3 (Decree 91/2020 "
                              f"allows at most 3), not {self.max_per_24h}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignsConfig:
    """``[campaigns]``: uploads and how running campaigns are fed to the links."""

    max_upload_mb: int = 200  # a larger upload gets 413
    # message ids per arq send job, at most (and about a second of the links' TPS)
    job_size: int = 1000
    # messages released (queued) ahead of the links: this many seconds at the links' TPS
    lookahead_s: float = 3.0
    # ... but at least this many: a link without a TPS (tps = 0) counts 100/s here, which
    # would cap a campaign near 2 × min_release per second (one top-up per tick_s = 0.5)
    min_release: int = 2000
    tick_s: float = 0.5  # how often the runner looks at running and scheduled campaigns
    report_masked: bool = True  # report.csv masks numbers unless asked otherwise
    samples: int = 5  # rendered samples kept for preview
    # a CSV upload of parse_split_mb or more is parsed by parse_workers processes at once
    # (0 = one per CPU), each reading its own part of the file; a smaller one by one thread
    parse_workers: int = 0
    parse_split_mb: float = 4.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """One routing rule; the first rule that matches a message gives its ordered links."""

    prefixes: tuple[str, ...] = ()  # E.164 digit prefixes, e.g. ("8496", "8497"); () = any
    pattern: str = ""  # regular expression on the E.164 digits; "" = any
    message_class: str = ""  # "care", "advertising" or "" = any
    sender: str = ""  # exact sender; "" = any
    links: tuple[str, ...] = ()  # tried in order: the next one when a link is down or refuses

    def __post_init__(self) -> None:
        if not self.links:
            raise ConfigError("every [[route]] needs links = [\"name\", ...]")
        if self.message_class not in ("", "care", "advertising"):
            raise ConfigError(f"route class must be care or advertising, not "
                              f"{self.message_class!r}")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(f"route pattern {self.pattern!r} is not a regex: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    smpp: SmppConfig = field(default_factory=SmppConfig)
    sending: SendingConfig = field(default_factory=SendingConfig)
    greetings: GreetingsConfig = field(default_factory=GreetingsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    keywords: KeywordsConfig = field(default_factory=KeywordsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    advertising: AdvertisingConfig = field(default_factory=AdvertisingConfig)
    campaigns: CampaignsConfig = field(default_factory=CampaignsConfig)
    #: the SMSC links; empty = one link made of [smpp]
    smsc: tuple[SmppConfig, ...] = ()
    route: tuple[RouteConfig, ...] = ()

    @property
    def links(self) -> tuple[SmppConfig, ...]:
        return self.smsc or (self.smpp,)

    def __post_init__(self) -> None:
        for link in self.links:
            # a part may be retried for half of stale_submitting_s and then wait for its
            # response; past stale_submitting_s the sweeper would treat it as abandoned
            if link.response_timeout_s >= self.sending.stale_submitting_s / 2:
                raise ConfigError(
                    f"smsc {link.name!r}: response_timeout_s ({link.response_timeout_s}) must "
                    f"be below half of sending.stale_submitting_s "
                    f"({self.sending.stale_submitting_s})")
        names = [link.name for link in self.links]
        if len(set(names)) != len(names):
            raise ConfigError(f"[[smsc]] names must be unique: {', '.join(names)}")
        for rule in self.route:
            unknown = [n for n in rule.links if n not in names]
            if unknown:
                raise ConfigError(f"[[route]] names unknown link(s) {', '.join(unknown)}; "
                                  f"links are {', '.join(names)}")


_SECTIONS: Mapping[str, type[Any]] = {
    k: v for k, v in typing.get_type_hints(Config).items()
    if k not in ("smsc", "route", "events")}
_ARRAYS: Mapping[str, type[Any]] = {"smsc": SmppConfig, "route": RouteConfig}
_ARRAY_KEYS = {"route": {"class": "message_class"}}


def _coerce(section: str, key: str, raw: Any, kind: Any, source: str) -> Any:
    if typing.get_origin(kind) is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        if isinstance(raw, str):
            raw = [x.strip() for x in raw.split(",") if x.strip()]
        if not isinstance(raw, list | tuple):
            raise ConfigError(f"{source}: {section}.{key} must be a list, got {raw!r}")
        return tuple(_coerce(section, key, x, item, source) for x in raw)
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


def _read_toml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} does not exist; copy config.example.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    unknown = set(data) - set(_SECTIONS) - set(_ARRAYS) - {"events"}
    if unknown:
        raise ConfigError(f"unknown section(s) in {path}: {', '.join(sorted(unknown))}")
    return data


def _build(cls: type[Any], label: str, values: Mapping[str, Any], source: str,
           env: Mapping[str, str], env_prefix: str | None,
           base: Mapping[str, Any] | None = None) -> Any:
    """One dataclass from TOML values, then ``<env_prefix>_<KEY>`` environment overrides."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = set(values) - fields
    if bad:
        raise ConfigError(f"unknown key(s) in {label}: {', '.join(sorted(bad))}")
    where = label.replace("[", "").replace("]", "").replace(" #", "#")  # "smpp", "smsc#2"
    out = {k: _coerce(where, k, v, hints[k], source) for k, v in values.items()}
    if env_prefix is not None:
        for key in fields:
            var = f"{env_prefix}_{key}".upper()
            if var in env:
                out[key] = _coerce(where, key, env[var], hints[key], f"environment {var}")
    return cls(**{**(base or {}), **out})


def load_config(path: str | Path | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read TOML at ``path`` (None: defaults only) and apply ``SMSGW_*`` overrides.

    ``[[smsc]]`` entries start from ``[smpp]`` and take ``SMSGW_SMSC_<NAME>_<KEY>`` overrides
    (NAME upper-cased, other characters as ``_``), e.g. ``SMSGW_SMSC_VIETTEL_1_PASSWORD``.
    """
    env = os.environ if env is None else env
    data = _read_toml(path)
    source = str(path)
    sections: dict[str, Any] = {
        name: _build(cls, f"[{name}]", dict(data.get(name, {})), source, env, f"SMSGW_{name}")
        for name, cls in _SECTIONS.items()}
    sections["events"] = EventsConfig.from_mapping(data.get("events", {}))
    base = dataclasses.asdict(sections["smpp"])
    for name, cls in _ARRAYS.items():
        entries = data.get(name, [])
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: use [[{name}]] (an array of tables) for {name}")
        built = []
        for i, entry in enumerate(entries, start=1):
            values = {_ARRAY_KEYS.get(name, {}).get(k, k): v for k, v in entry.items()}
            prefix = None
            if name == "smsc":
                tag = re.sub(r"[^A-Za-z0-9]", "_", str(values.get("name", i)))
                prefix = f"SMSGW_SMSC_{tag}"
            built.append(_build(cls, f"[[{name}]] #{i}", values, source, env, prefix,
                                base if name == "smsc" else None))
        sections[name] = tuple(built)
    return Config(**sections)


def describe_defaults() -> dict[str, dict[str, Any]]:
    """Every section and key with its default (used to check config.example.toml)."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in _SECTIONS.items():
        inst = cls()
        out[name] = {f.name: (list(v) if isinstance(v := getattr(inst, f.name), tuple) else v)
                     for f in dataclasses.fields(cls)}
    return out

