"""The MO keyword router: what an inbound SMS asks for, who handles it, what to answer.

Three parts:

* :func:`normalise_words` and :class:`KeywordTable` (pure): the keyword table of
  ``keywords.toml``, validated when loaded, and matching of a text against it -- accent-,
  case- and separator-insensitive, longest keyword first, the remaining words kept as typed.
* :func:`reply_refusal` (pure): whether a number may get a reply now (rate limit, and help for
  unrecognised messages at most once per ``unknown_help_every_s``).
* :class:`KeywordRouter`: the :class:`~gateway.mo.MoReceiver` ``on_message`` hook. For each
  inbound message: claim and record it in ``mo_log``; no reply unless the source is a mobile
  number; a keyword calls its :class:`~gateway.actions.Action`; otherwise the survey hook may
  take it; otherwise help for an unrecognised message. Replies are care messages made through
  :class:`~gateway.intake.Intake` with the idempotency key ``mo-reply:<inbound id>`` (a
  message handled twice is answered once), limited per number from ``mo_log`` (shared by every
  gateway process), and never built from subscriber text.
"""

from __future__ import annotations

import logging
import re
import tomllib
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from gateway.actions import Action, ActionResult, MoContext
from gateway.actions.basic import HELP_TEMPLATE, HelpAction, NotConfiguredAction
from gateway.config import KeywordsConfig
from gateway.domain import MessageClass
from gateway.intake import Intake, IntakeError, SendRequest
from gateway.masking import mask_msisdn
from gateway.numbers import InvalidNumber, normalise_msisdn
from gateway.smpp.encoding import khong_dau
from gateway.store.inbound import InboundMessage, InboundStore
from gateway.store.mo_log import MoLogStore, ReplyHistory

log = logging.getLogger("smsgw.keywords")

#: Template of the answer to a message no keyword matches; it gets ``help_text``.
UNKNOWN_TEMPLATE = "keyword_unknown"
#: Keyword written on an inbound message taken by the survey hook (as gateway.surveys does).
SURVEY_KEYWORD = "SURVEY"
#: Idempotency key prefix of replies: one reply per inbound message, however often handled.
REPLY_KEY_PREFIX = "mo-reply:"
DEFAULT_ERROR_TEXT = ("Xin loi, he thong chua xu ly duoc yeu cau cua Quy khach. "
                      "Vui long thu lai sau it phut.")
NOT_MOBILE = "no reply: not a mobile number"

# Word separators: whitespace, '_', '-', '.', ',', ':', ';', '!' and dashes. '?' is not one
# ("?" alone asks for help).
_SEPARATORS = " \t\r\n\f\v_-.,:;!\u2013\u2014\u00a0"
_WORD_RE = re.compile(r"[^\s_\-.,:;!\u2013\u2014]+")
_INVISIBLE_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_ACTION_RE = re.compile(r"[a-z][a-z0-9_]*")
_TEMPLATE_RE = re.compile(r"[a-z0-9][a-z0-9_]*")
_TOP_FIELDS = frozenset({"help_text", "error_text", "keyword"})
_ENTRY_FIELDS = frozenset({"keyword", "aliases", "action", "reply_template", "max_args",
                           "description"})


# --------------------------------------------------------------------------- configuration


# --------------------------------------------------------------------------- words


@dataclass(frozen=True, slots=True)
class _Word:
    folded: str  # NFKC, no diacritics, upper case
    end: int  # end offset in the cleaned text


def _clean(text: str) -> str:
    """NFC without invisible characters: what args and offsets refer to."""
    return unicodedata.normalize("NFC", _INVISIBLE_RE.sub("", text))


def _fold(word: str) -> str:
    return khong_dau(unicodedata.normalize("NFKC", word)).upper()


def _words(clean: str) -> list[_Word]:
    words = (_Word(_fold(m.group()), m.end()) for m in _WORD_RE.finditer(clean))
    return [w for w in words if w.folded]


def normalise_words(text: str) -> list[str]:
    """The words of ``text`` as keywords are compared: ``"HỦY  qc"``, ``"huy_qc"`` and
    ``"Hủy-QC"`` all give ``["HUY", "QC"]`` (NFKC, no diacritics, upper case; whitespace,
    ``_ - . , : ; !`` separate words)."""
    return [w.folded for w in _words(_clean(text))]


# --------------------------------------------------------------------------- the table


class KeywordTableError(ValueError):
    """The keyword table cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeywordEntry:
    keyword: str  # canonical: normalised words joined by one space, e.g. "KT CUOC"
    aliases: tuple[str, ...]  # normalised likewise
    action: str
    reply_template: str | None = None
    max_args: int | None = None
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    keyword: str  # canonical keyword
    action: str
    args: tuple[str, ...]  # the words after the keyword, as typed (split on whitespace)
    reply_template: str | None = None  # the table's override of the action's reply


def _spellings(entry: KeywordEntry) -> tuple[str, ...]:
    return (entry.keyword, *entry.aliases)


@dataclass(frozen=True, slots=True)
class KeywordTable:
    entries: tuple[KeywordEntry, ...]
    help_text: str
    error_text: str = DEFAULT_ERROR_TEXT
    source: str = "<memory>"
    _index: Mapping[tuple[str, ...], KeywordEntry] = field(default_factory=dict, repr=False,
                                                          compare=False)
    _longest: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[tuple[str, ...], KeywordEntry] = {}
        for entry in self.entries:
            for spelling in _spellings(entry):
                index[tuple(spelling.split(" "))] = entry
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_longest", max((len(k) for k in index), default=0))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(entry.action for entry in self.entries)

    @classmethod
    def load(cls, path: Path | str) -> KeywordTable:
        """Read and validate a keywords file; :class:`KeywordTableError` says what is wrong."""
        path = Path(path)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise KeywordTableError(f"{path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise KeywordTableError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise KeywordTableError(f"{path}: cannot be read: {exc}") from exc
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: Mapping[str, Any], *, source: str = "<memory>") -> KeywordTable:
        """A table from the decoded TOML document (see keywords.toml for the layout)."""
        unknown = sorted(set(raw) - _TOP_FIELDS)
        if unknown:
            raise KeywordTableError(f"{source}: unknown field(s) {', '.join(unknown)}; the "
                                    f"fields are {', '.join(sorted(_TOP_FIELDS))}")
        help_text = _text(raw, "help_text", source, required=True) or ""
        error_text = _text(raw, "error_text", source, required=False) or DEFAULT_ERROR_TEXT
        items = raw.get("keyword")
        if not isinstance(items, list) or not items:
            raise KeywordTableError(f"{source}: needs at least one [[keyword]] entry")
        entries = tuple(_entry(item, f"{source}: [[keyword]] #{n}")
                        for n, item in enumerate(items, 1))
        _check_unique(entries, source)
        return cls(entries, help_text, error_text, source)

    def match(self, text: str) -> Match | None:
        """The keyword ``text`` starts with (the longest one), or None.

        A text of digits only (``"5"``, ``"5."``) is never a keyword: survey answers.
        """
        clean = _clean(text)
        words = _words(clean)
        if not words or all(w.folded.isdigit() for w in words):
            return None
        folded = [w.folded for w in words]
        for n in range(min(self._longest, len(words)), 0, -1):
            entry = self._index.get(tuple(folded[:n]))
            if entry is None:
                continue
            args = tuple(clean[words[n - 1].end:].lstrip(_SEPARATORS).split())
            if entry.max_args is not None and len(args) > entry.max_args:
                continue
            return Match(keyword=entry.keyword, action=entry.action, args=args,
                         reply_template=entry.reply_template)
        return None


def _text(raw: Mapping[str, Any], name: str, where: str, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise KeywordTableError(f"{where}: {name} must be a non-empty string")
    return value.strip()


def _spelling(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise KeywordTableError(f"{where}: {what} must be a string, not {value!r}")
    words = normalise_words(value)
    if not words:
        raise KeywordTableError(f"{where}: {what} {value!r} has no words")
    if all(w.isdigit() for w in words):
        raise KeywordTableError(f"{where}: {what} {value!r} is only digits: it would take "
                                "survey answers")
    return " ".join(words)


def _entry(item: Any, where: str) -> KeywordEntry:
    if not isinstance(item, Mapping):
        raise KeywordTableError(f"{where}: must be a table")
    keyword = _spelling(item.get("keyword"), where, "keyword")
    where = f"{where} ({keyword})"
    unknown = sorted(set(item) - _ENTRY_FIELDS)
    if unknown:
        raise KeywordTableError(f"{where}: unknown field(s) {', '.join(unknown)}; the fields "
                                f"are {', '.join(sorted(_ENTRY_FIELDS))}")
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list):
        raise KeywordTableError(f"{where}: aliases must be a list of strings")
    action = item.get("action")
    if not isinstance(action, str) or not _ACTION_RE.fullmatch(action):
        raise KeywordTableError(f"{where}: action must be an action name (lower-case letters, "
                                f"digits, '_'), not {action!r}")
    template = item.get("reply_template")
    if template is not None and (not isinstance(template, str)
                                 or not _TEMPLATE_RE.fullmatch(template)):
        raise KeywordTableError(f"{where}: reply_template must be a template name, not "
                                f"{template!r}")
    max_args = item.get("max_args")
    if max_args is not None and (isinstance(max_args, bool) or not isinstance(max_args, int)
                                 or max_args < 0):
        raise KeywordTableError(f"{where}: max_args must be a whole number ≥ 0")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise KeywordTableError(f"{where}: description must be a string")
    return KeywordEntry(
        keyword=keyword, aliases=tuple(_spelling(a, where, "alias") for a in aliases),
        action=action, reply_template=template, max_args=max_args, description=description)


def _check_unique(entries: Sequence[KeywordEntry], source: str) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        for spelling in _spellings(entry):
            owner = seen.get(spelling)
            if owner is not None:
                where = "twice in its entry" if owner == entry.keyword else \
                    f"in both {owner!r} and {entry.keyword!r}"
                raise KeywordTableError(f"{source}: {spelling!r} is a keyword or alias {where}")
            seen[spelling] = entry.keyword


# --------------------------------------------------------------------------- reply limits


def reply_refusal(history: ReplyHistory, *, now: datetime, help_reply: bool,
                  limits: KeywordsConfig) -> str | None:
    """Why a number may not get a reply at ``now`` (None: it may).

    At most ``reply_limit`` replies per ``reply_window_s`` (the replies at or after
    ``now - reply_window_s`` count), whatever their kind: an auto-responder answering our
    answers is cut off. Help for an unrecognised message (``help_reply``) goes out at most
    once per ``unknown_help_every_s``.
    """
    start = now - timedelta(seconds=limits.reply_window_s)
    recent = sum(1 for at in history.recent_replies if at >= start)
    if recent >= limits.reply_limit:
        return (f"no reply: rate limited ({recent} replies in the last "
                f"{limits.reply_window_s:.0f}s, limit {limits.reply_limit})")
    last = history.last_help_reply
    if help_reply and last is not None \
            and now - last < timedelta(seconds=limits.unknown_help_every_s):
        return (f"no reply: help already sent within {limits.unknown_help_every_s:.0f}s")
    return None


# --------------------------------------------------------------------------- the router

#: ``(msisdn, text, received_at, inbound_id) -> taken?``; e.g. ``SurveyService.on_inbound``.
SurveyHook = Callable[[str, str, datetime, UUID], Awaitable[bool]]


class MoObserver(Protocol):
    """What the router reports per inbound message (e.g. :class:`gateway.metrics.Metrics`)."""

    def mo_handled(self, keyword: str | None) -> None:
        """An inbound message was handled: its canonical keyword, ``SURVEY`` for a survey
        answer, None when no keyword matched. A redelivered message is reported once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reply:
    kind: str  # "action", "help" (unrecognised / declined) or "error"
    template: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    keyword: str | None = None
    action: str | None = None
    detail: str = ""
    reason: str | None = None
    reply: _Reply | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _result_reply(result: ActionResult, match: Match) -> _Reply | None:
    """The reply an action asked for; the table's reply_template replaces the action's."""
    if result.reply_template is None and result.reply_text is None:
        return None
    template = match.reply_template or result.reply_template
    if template is not None:
        return _Reply(kind="action", template=template,
                      data={"keyword": match.keyword, **result.reply_data})
    return _Reply(kind="action", text=result.reply_text)


class KeywordRouter:
    """The MO hook: record, match, act, answer (see the module docstring).

    ``actions`` maps the action names of the table to implementations; ``help`` defaults to
    :class:`~gateway.actions.basic.HelpAction` on the table's help text, and a name with no
    implementation gets :class:`~gateway.actions.basic.NotConfiguredAction`.
    """

    def __init__(self, table_path: Path | str, *, actions: Mapping[str, Action],
                 intake: Intake, log_store: MoLogStore, inbound: InboundStore,
                 surveys: SurveyHook | None = None, limits: KeywordsConfig | None = None,
                 region: str = "VN", clock: Callable[[], datetime] = _utc_now,
                 observer: MoObserver | None = None) -> None:
        self._path = Path(table_path)
        self._table = KeywordTable.load(self._path)
        self._actions: dict[str, Action] = {"help": HelpAction(self._help_text)}
        self._actions.update(actions)
        self._intake = intake
        self._log = log_store
        self._inbound = inbound
        self._surveys = surveys
        self._limits = limits or KeywordsConfig()
        self._region = region
        self._clock = clock
        self.observer = observer
        self._warn_missing(self._table)

    @property
    def table(self) -> KeywordTable:
        return self._table

    def _help_text(self) -> str:
        return self._table.help_text

    def _warn_missing(self, table: KeywordTable) -> None:
        missing = sorted(table.actions - set(self._actions))
        if missing:
            log.warning("keywords: no implementation for action(s) %s; they answer "
                        "'being updated'", ", ".join(missing))

    # ---- reloading

    def reload(self) -> KeywordTable:
        """Re-read the table file. If it is invalid, the current table stays in use and
        :class:`KeywordTableError` says why."""
        try:
            table = KeywordTable.load(self._path)
        except KeywordTableError as exc:
            log.error("keywords not reloaded, keeping the %d loaded before: %s",
                      len(self._table), exc)
            raise
        self._table = table
        log.info("keywords reloaded: %d keyword(s) from %s", len(table), self._path)
        self._warn_missing(table)
        return table

    def try_reload(self) -> bool:
        """:meth:`reload` that never raises (for a SIGHUP handler); whether it worked."""
        try:
            self.reload()
        except KeywordTableError:
            return False
        return True

    # ---- handling

    def _mobile(self, source: str) -> str | None:
        try:
            return normalise_msisdn(source, region=self._region)
        except InvalidNumber:
            return None

    async def on_message(self, msg: InboundMessage) -> None:
        """Handle one inbound message (``MoReceiver.on_message``); at most one reply."""
        table = self._table
        number = self._mobile(msg.source)
        now = self._clock()
        entry_id = await self._log.claim(msg.id, number or msg.source, msg.received_at,
                                         at=now, stale_after_s=self._limits.claim_stale_s)
        if entry_id is None:
            log.info("MO %s already handled (or being handled); skipped", msg.id)
            return
        outcome = await self._decide(msg, number, table)
        if self.observer is not None:
            self.observer.mo_handled(outcome.keyword)
        reply_id: UUID | None = None
        reason = outcome.reason
        if outcome.reply is not None and number is not None:
            reply_id, refusal = await self._send_reply(entry_id, number, msg.id,
                                                       outcome.reply, now)
            reason = refusal or reason
        await self._log.record(entry_id, keyword=outcome.keyword, action=outcome.action,
                               detail=outcome.detail, reply_message_id=reply_id, reason=reason)
        await self._inbound.mark_handled(msg.id, outcome.keyword)
        log.info("MO %s from %s: keyword %s, action %s, %s", msg.id,
                 mask_msisdn(number or msg.source), outcome.keyword or "-",
                 outcome.action or "-",
                 f"reply {reply_id}" if reply_id is not None else reason or "no reply")

    async def _decide(self, msg: InboundMessage, number: str | None,
                      table: KeywordTable) -> _Outcome:
        match = table.match(msg.text)
        if number is None:
            return _Outcome(keyword=match.keyword if match else None, detail="not acted on",
                            reason=NOT_MOBILE)
        if match is not None:
            return await self._act(match, msg, number, table)
        if self._surveys is not None and await self._surveys(number, msg.text,
                                                             msg.received_at, msg.id):
            return _Outcome(keyword=SURVEY_KEYWORD, action="survey", detail="survey reply")
        return _Outcome(action="unknown", detail="no keyword matched",
                        reply=_Reply(kind="help", template=UNKNOWN_TEMPLATE,
                                     data={"help_text": table.help_text}))

    def _action(self, name: str) -> Action:
        action = self._actions.get(name)
        if action is None:
            action = self._actions[name] = NotConfiguredAction(name)
        return action

    async def _act(self, match: Match, msg: InboundMessage, number: str,
                   table: KeywordTable) -> _Outcome:
        ctx = MoContext(inbound_id=msg.id, msisdn=number, destination=msg.destination,
                        text=msg.text, received_at=msg.received_at, link=msg.link,
                        keyword=match.keyword, args=match.args)
        try:
            result = await self._action(match.action)(ctx)
        except Exception as exc:
            log.error("MO %s: action %s for keyword %s failed: %s", msg.id, match.action,
                      match.keyword, type(exc).__name__, exc_info=True)
            return _Outcome(keyword=match.keyword, action=match.action,
                            detail=f"action failed: {type(exc).__name__}",
                            reason="action failed",
                            reply=_Reply(kind="error", text=table.error_text))
        if not result.handled:
            return _Outcome(keyword=match.keyword, action=result.action,
                            detail=result.detail or "declined", reason="action declined",
                            reply=_Reply(kind="help", template=HELP_TEMPLATE,
                                         data={"help_text": table.help_text}))
        return _Outcome(keyword=match.keyword, action=result.action, detail=result.detail,
                        reply=_result_reply(result, match))

    async def _send_reply(self, entry_id: int, number: str, inbound_id: UUID, reply: _Reply,
                          now: datetime) -> tuple[UUID | None, str | None]:
        """(reply message id, None) or (None, why there is no reply)."""
        limits = self._limits

        def decide(history: ReplyHistory) -> str | None:
            return reply_refusal(history, now=now, help_reply=reply.kind == "help",
                                 limits=limits)

        refusal = await self._log.reserve_reply(
            entry_id, number, kind=reply.kind,
            since=now - timedelta(seconds=limits.reply_window_s), decide=decide)
        if refusal is not None:
            return None, refusal
        request = SendRequest(to=number, template=reply.template, data=reply.data,
                              text=reply.text, message_class=MessageClass.CARE,
                              idempotency_key=f"{REPLY_KEY_PREFIX}{inbound_id}")
        try:
            record, _ = await self._intake.submit(request, api_key_id=None)
        except IntakeError as exc:
            await self._log.release_reply(entry_id)
            log.warning("MO %s: reply to %s not made (%s: %s)", inbound_id,
                        mask_msisdn(number), exc.field, exc.reason)
            return None, f"reply failed: {exc.field}: {exc.reason}"
        return record.id, None
