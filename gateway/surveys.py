"""Customer-satisfaction surveys by SMS: invite a segment or a list, read the replies.

A survey has a question, the valid answers (``("1", "2", "3", "4", "5")`` by default for the
``survey_invite`` template) and a reply window. :meth:`SurveyService.send` invites each number
once (``survey_recipients``' primary key, and the message's idempotency key
``survey:<id>:<msisdn>``), so sending again -- after a crash, or to a segment that has grown --
only invites the numbers not invited yet. The messages are care messages made without an API
key (the idempotency key is global, whichever API key asks for the send).

Replies arrive as MO messages (:meth:`SurveyService.on_message` is a
:class:`~gateway.mo.MoReceiver` ``on_message`` hook). An MO is a reply when its number has an
invitation whose window ``[sent_at, sent_at + reply_window_s]`` covers the time it was
received; with several, the most recently sent one wins. A reply is read by
:func:`classify_reply`:

* the reply is one of the answers (after folding: NFKC, no diacritics, upper case, single
  spaces; ``" 5 "``, ``"５"``, ``"5."`` all read as ``"5"``) -> that answer;
* the reply starts with an answer followed by a space or punctuation -> the answer, and the
  rest is kept as a comment (``"5 rat hai long"`` -> answer ``"5"``, comment
  ``"rat hai long"``);
* anything else (``"hai long"``, ``"6"`` when the answers are 1-5, ``"55"``) -> a comment.

One reply is kept per recipient: a later answer replaces an earlier one, a later comment
replaces an earlier comment, and a reply without one keeps the earlier one (``"5"`` then
``"rat cham"`` keeps the 5 and adds the comment). Replies outside the window are not survey
replies (:meth:`SurveyService.on_inbound` answers False and the keyword router sees them).
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID
from zoneinfo import ZoneInfo

from gateway.domain import MessageClass
from gateway.intake import Intake, IntakeError, SendRequest
from gateway.masking import mask_msisdn
from gateway.numbers import InvalidNumber, normalise_msisdn
from gateway.smpp.encoding import khong_dau
from gateway.store.messages import MessageRecord
from gateway.store.subscribers import SubscriberStore, canonical_tier
from gateway.store.surveys import (
    DEFAULT_TEMPLATE,
    NewSurvey,
    Survey,
    SurveyResults,
    SurveyStore,
)

if TYPE_CHECKING:
    from gateway.store.inbound import InboundMessage, InboundStore

log = logging.getLogger("smsgw.surveys")

IDEMPOTENCY_PREFIX = "survey:"
#: ``keyword`` written on an inbound message handled as a survey reply.
SURVEY_KEYWORD = "SURVEY"
DEFAULT_ANSWERS = ("1", "2", "3", "4", "5")
#: Variables of the ``survey_invite`` template when the send does not give them.
DEFAULT_CHANNEL = "tổng đài CSKH"
MIN_REPLY_WINDOW_S = 60
MAX_REPLY_WINDOW_S = 30 * 86400
MAX_ANSWERS = 20
MAX_ANSWER_LEN = 50
MAX_NAME_LEN = 200
MAX_QUESTION_LEN = 1000
MAX_MSISDNS = 100_000

# Characters allowed between an answer and the comment that follows it ("5. rat tot").
_AFTER_ANSWER = " \t.,;:!?-–—/\\)]}>\"'’”…"
_BEFORE_ANSWER = " \t\"'‘“([{<"


# --- pure helpers ---------------------------------------------------------------------------


def fold(text: str) -> str:
    """How replies and answers are compared: NFKC, no diacritics, upper case, single spaces."""
    return " ".join(khong_dau(unicodedata.normalize("NFKC", text)).upper().split())


def _remainder(clean: str, folded_answer: str) -> str:
    """What follows the (folded) answer at the start of ``clean``, separators removed."""
    for end in range(1, len(clean) + 1):
        if fold(clean[:end]) == folded_answer:
            return clean[end:].lstrip(_AFTER_ANSWER).strip()
    return clean  # unreachable when the folded text starts with the answer


def classify_reply(text: str, answers: Iterable[str]) -> tuple[str | None, str | None]:
    """(answer, comment) of an SMS reply to a survey with these valid ``answers``.

    The answer is returned as configured (``"Có"`` for a reply ``"co"``); the comment keeps the
    subscriber's own spelling (NFKC, single spaces). ``(None, None)`` for an empty reply. See
    the module docstring for the rules.
    """
    clean = " ".join(unicodedata.normalize("NFKC", text).split())
    if not clean:
        return None, None
    body = clean.lstrip(_BEFORE_ANSWER)
    folded = fold(body)
    # longest answer first, so "10" wins over "1" and "RAT TOT" over "RAT"
    candidates = sorted(((fold(a), a) for a in answers), key=lambda p: -len(p[0]))
    for folded_answer, answer in candidates:
        if not folded_answer or not folded.startswith(folded_answer):
            continue
        if len(folded) == len(folded_answer):
            return answer, None
        if folded[len(folded_answer)].isalnum():
            continue  # "55" or "5k" is not the answer "5"
        rest = _remainder(body, folded_answer)
        return answer, rest or None
    return None, clean


def reply_deadline(sent_at: datetime, reply_window_s: int) -> datetime:
    """The last instant a reply to an invitation sent at ``sent_at`` counts."""
    return sent_at + timedelta(seconds=reply_window_s)


def in_reply_window(sent_at: datetime, reply_window_s: int, at: datetime) -> bool:
    """Whether ``at`` is in ``[sent_at, sent_at + reply_window_s]`` (aware datetimes)."""
    return sent_at <= at <= reply_deadline(sent_at, reply_window_s)


def check_answers(answers: Sequence[str]) -> tuple[str, ...]:
    """The answers, stripped; refuses none, too many, blank, too long or look-alike ones."""
    if isinstance(answers, str) or not 1 <= len(answers) <= MAX_ANSWERS:
        raise IntakeError("answers", f"give a list of 1 to {MAX_ANSWERS} answers, "
                                     "e.g. [\"1\", \"2\", \"3\", \"4\", \"5\"]")
    out: list[str] = []
    seen: dict[str, str] = {}
    for raw in answers:
        if not isinstance(raw, str):
            raise IntakeError("answers", "every answer must be a string", status=400)
        answer = " ".join(raw.split())
        key = fold(answer)
        if not key or len(answer) > MAX_ANSWER_LEN:
            raise IntakeError("answers", f"every answer has 1 to {MAX_ANSWER_LEN} characters")
        if key in seen:
            raise IntakeError("answers", f"{seen[key]!r} and {answer!r} read the same in a "
                                         "reply (case and diacritics are ignored)")
        seen[key] = answer
        out.append(answer)
    return tuple(out)


def _text(value: str, field: str, limit: int) -> str:
    text = value.strip()
    if not 1 <= len(text) <= limit:
        raise IntakeError(field, f"must have 1 to {limit} characters")
    return text


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A number of an explicit list that was not invited."""

    value: str  # as given
    reason: str


@dataclass(frozen=True, slots=True)
class SendReport:
    survey_id: UUID
    invited: int  # invitations made by this call
    already_invited: int  # recipients that already had their invitation
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True, slots=True)
class _Recipient:
    msisdn: str
    khong_dau: bool = False


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SurveyService:
    """Creates surveys, sends invitations once per number, records the replies."""

    def __init__(self, store: SurveyStore, intake: Intake, subscribers: SubscriberStore, *,
                 region: str = "VN", inbound: InboundStore | None = None,
                 tz: str = "Asia/Ho_Chi_Minh", batch: int = 500, concurrency: int = 8,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        if batch < 1 or concurrency < 1:
            raise ValueError("batch and concurrency must be at least 1")
        self._store = store
        self._intake = intake
        self._subscribers = subscribers
        self._region = region
        # when given, on_message marks the inbound messages it handled (keyword SURVEY)
        self._inbound = inbound
        self._tz = ZoneInfo(tz)
        self._batch = batch
        self._slots = asyncio.Semaphore(concurrency)
        self._clock = clock

    @property
    def store(self) -> SurveyStore:
        return self._store

    # --- surveys ---------------------------------------------------------------------------

    async def create(self, name: str, question: str, answers: Sequence[str] = DEFAULT_ANSWERS,
                     reply_window_s: int = 86400, *,
                     template: str = DEFAULT_TEMPLATE) -> Survey:
        """A new ``draft`` survey (IntakeError for a value that cannot be used)."""
        if isinstance(reply_window_s, bool) or not isinstance(reply_window_s, int) or \
                not MIN_REPLY_WINDOW_S <= reply_window_s <= MAX_REPLY_WINDOW_S:
            raise IntakeError("reply_window_s", f"must be whole seconds from "
                                                f"{MIN_REPLY_WINDOW_S} to {MAX_REPLY_WINDOW_S}")
        survey = await self._store.create(NewSurvey(
            name=_text(name, "name", MAX_NAME_LEN),
            question=_text(question, "question", MAX_QUESTION_LEN),
            answers=check_answers(answers), reply_window_s=reply_window_s,
            template=_text(template, "template", 100)))
        log.info("survey %s %r created (%d answers, window %ds)", survey.id, survey.name,
                 len(survey.answers), survey.reply_window_s)
        return survey

    async def get(self, survey_id: UUID) -> Survey | None:
        return await self._store.get(survey_id)

    async def _existing(self, survey_id: UUID) -> Survey:
        survey = await self._store.get(survey_id)
        if survey is None:
            raise IntakeError("id", f"no survey with id {survey_id}", status=404)
        return survey

    async def close(self, survey_id: UUID) -> Survey:
        """Stop taking replies (and sending) for the survey."""
        await self._existing(survey_id)
        survey = await self._store.set_status(survey_id, "closed")
        assert survey is not None
        log.info("survey %s closed", survey_id)
        return survey

    async def results(self, survey_id: UUID, *, comment_limit: int = 1000) -> SurveyResults:
        found = await self._store.results(survey_id, comment_limit=comment_limit)
        if found is None:
            raise IntakeError("id", f"no survey with id {survey_id}", status=404)
        return found

    # --- sending ---------------------------------------------------------------------------

    async def send(self, survey_id: UUID, *, tiers: Sequence[str] | None = None,
                   segment: str | None = None, msisdns: Sequence[str] | None = None,
                   data: Mapping[str, Any] | None = None) -> SendReport:
        """Invite the active subscribers of ``tiers`` and/or ``segment``, or the numbers of
        ``msisdns`` (not both); each number once per survey, whatever is sent again.

        ``data``: variables for the template (the ``survey_invite`` template needs
        ``channel``, default "tổng đài CSKH", and ``contact_date``, default today in Việt
        Nam); ``question``, ``answers`` and ``survey_name`` are always the survey's.
        Numbers of ``msisdns`` that are not usable mobile numbers come back as ``rejected``.
        """
        survey = await self._existing(survey_id)
        if survey.status == "closed":
            raise IntakeError("id", "the survey is closed", status=409)
        if msisdns is not None and (tiers is not None or segment is not None):
            raise IntakeError("msisdns", "give either msisdns or tiers/segment, not both")
        if msisdns is None and tiers is None and segment is None:
            raise IntakeError("msisdns", "give msisdns, or tiers and/or segment to invite")
        template_data = self._template_data(survey, data or {})
        invited = already = 0
        rejected: list[Rejected] = []
        async for page in self._pages(tiers=tiers, segment=segment, msisdns=msisdns,
                                      rejected=rejected):
            made, had, refused = await self._invite(survey, page, template_data)
            invited += made
            already += had
            rejected.extend(refused)
        if invited:
            await self._store.set_status(survey.id, "sent", only_from=("draft",))
        log.info("survey %s sent: %d invited, %d already invited, %d rejected", survey.id,
                 invited, already, len(rejected))
        return SendReport(survey_id=survey.id, invited=invited, already_invited=already,
                          rejected=tuple(rejected))

    def _template_data(self, survey: Survey, data: Mapping[str, Any]) -> dict[str, Any]:
        today = self._clock().astimezone(self._tz).date().isoformat()
        return {"channel": DEFAULT_CHANNEL, "contact_date": today, **data,
                "question": survey.question, "answers": list(survey.answers),
                "survey_name": survey.name}

    async def _pages(self, *, tiers: Sequence[str] | None, segment: str | None,
                     msisdns: Sequence[str] | None,
                     rejected: list[Rejected]) -> AsyncIterator[list[_Recipient]]:
        """Batches of recipients; numbers of ``msisdns`` that cannot be used go to
        ``rejected``."""
        if msisdns is not None:
            numbers = self._normalise_all(msisdns, rejected)
            for i in range(0, len(numbers), self._batch):
                yield [_Recipient(m) for m in numbers[i:i + self._batch]]
            return
        wanted = self._check_tiers(tiers)
        after = ""
        while True:
            subs = await self._subscribers.in_segment(tiers=wanted, segment=segment,
                                                      after_msisdn=after, limit=self._batch)
            if subs:
                yield [_Recipient(s.msisdn, s.khong_dau) for s in subs]
            if len(subs) < self._batch:
                return
            after = subs[-1].msisdn

    @staticmethod
    def _check_tiers(tiers: Sequence[str] | None) -> list[str] | None:
        if tiers is None:
            return None
        if isinstance(tiers, str) or not tiers:
            raise IntakeError("tiers", "must be a non-empty list of tier names")
        out: list[str] = []
        for tier in tiers:
            found = canonical_tier(tier) if isinstance(tier, str) else None
            if found is None:
                raise IntakeError("tiers", f"unknown tier {str(tier)[:40]!r}")
            out.append(found)
        return out

    def _normalise_all(self, msisdns: Sequence[str], rejected: list[Rejected]) -> list[str]:
        if isinstance(msisdns, str):
            raise IntakeError("msisdns", "must be a list of numbers", status=400)
        if len(msisdns) > MAX_MSISDNS:
            raise IntakeError("msisdns", f"at most {MAX_MSISDNS} numbers per call; use a "
                                         "segment or split the list")
        seen: dict[str, None] = {}
        for raw in msisdns:
            if not isinstance(raw, str):
                rejected.append(Rejected(str(raw)[:40], "not a string"))
                continue
            try:
                seen.setdefault(normalise_msisdn(raw, region=self._region), None)
            except InvalidNumber as exc:
                rejected.append(Rejected(raw[:40], exc.reason))
        return list(seen)

    async def _invite(self, survey: Survey, page: Sequence[_Recipient],
                      data: Mapping[str, Any]) -> tuple[int, int, list[Rejected]]:
        """Claim the page's recipients and make their messages: (made, had one, rejected)."""
        numbers = [r.msisdn for r in page]
        await self._store.add_recipients(survey.id, numbers)
        pending = set(await self._store.without_message(survey.id, numbers))
        todo = [r for r in page if r.msisdn in pending]
        results = await asyncio.gather(*(self._submit(survey, r, data) for r in todo),
                                       return_exceptions=True)
        sent: list[tuple[str, UUID]] = []
        refused: list[Rejected] = []
        failed: list[str] = []
        fatal: BaseException | None = None
        for recipient, result in zip(todo, results, strict=True):
            if isinstance(result, MessageRecord):
                sent.append((recipient.msisdn, result.id))
            elif isinstance(result, IntakeError):
                failed.append(recipient.msisdn)
                if result.field == "to":
                    refused.append(Rejected(recipient.msisdn, result.reason))
                else:  # the template or its data: every other recipient fails alike
                    fatal = fatal or result
            else:
                fatal = fatal or result  # Postgres down...: the claim stays, a resend retries
        # a concurrent send of the same page may attach first: only what this call attached
        # counts as invited by it
        attached = await self._store.attach_messages(survey.id, sent)
        await self._store.forget_recipients(survey.id, failed)
        if fatal is not None:
            if isinstance(fatal, IntakeError):
                log.warning("survey %s: invitation cannot be made (bad %s)", survey.id,
                            fatal.field)
            raise fatal
        return attached, len(page) - attached - len(failed), refused

    async def _submit(self, survey: Survey, recipient: _Recipient,
                      data: Mapping[str, Any]) -> MessageRecord:
        request = SendRequest(
            to=recipient.msisdn, template=survey.template, data=data,
            khong_dau=recipient.khong_dau, message_class=MessageClass.CARE,
            idempotency_key=f"{IDEMPOTENCY_PREFIX}{survey.id}:{recipient.msisdn}")
        async with self._slots:
            record, _ = await self._intake.submit(request, api_key_id=None)
        return record

    # --- replies ---------------------------------------------------------------------------

    async def on_inbound(self, msisdn: str, text: str, received_at: datetime,
                         inbound_id: UUID | None = None) -> bool:
        """Record an MO as a survey reply if its number has an open invitation; whether it
        was one (True: the keyword router should leave it alone)."""
        try:
            number = normalise_msisdn(msisdn, region=self._region)
        except InvalidNumber:
            return False
        invite = await self._store.open_invite_for(number, received_at)
        if invite is None:
            return False
        answer, comment = classify_reply(text, invite.answers)
        if answer is None and comment is None:
            return False  # an empty MO: nothing to record, the router may answer it
        stored = await self._store.record_reply(
            invite.survey_id, number, answer=answer, comment=comment,
            received_at=received_at, inbound_id=inbound_id)
        kind = "answer and comment" if answer and comment else "answer" if answer else \
            "comment"
        log.info("survey %s: %s from %s %s", invite.survey_id, kind, mask_msisdn(number),
                 "recorded" if stored else "not recorded (a newer reply is stored)")
        log.debug("survey %s: answer %r", invite.survey_id, answer)
        return True

    async def on_message(self, message: InboundMessage) -> None:
        """:class:`~gateway.mo.MoReceiver` ``on_message`` hook: :meth:`on_inbound`, then mark
        the inbound message handled (keyword ``SURVEY``) when an InboundStore was given."""
        handled = await self.on_inbound(message.source, message.text, message.received_at,
                                        message.id)
        if handled and self._inbound is not None:
            await self._inbound.mark_handled(message.id, SURVEY_KEYWORD)
