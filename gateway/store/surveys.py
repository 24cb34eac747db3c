"""Surveys, their recipients and their replies (``surveys``, ``survey_recipients``,
``survey_replies``; see ``sql/0008_surveys.sql`` for the rules the tables keep).

Recipients are added in batches with ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO
NOTHING``: a number is invited to a survey once, whoever sends the survey how often. The reply
window is checked in the statement that records a reply, so a reply is never stored outside
``[sent_at, sent_at + reply_window_s]`` nor for a closed survey, whatever the caller checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from gateway.masking import mask_msisdn

log = logging.getLogger("smsgw.store.surveys")

#: Values of ``surveys.status``.
SURVEY_STATUSES = ("draft", "sent", "closed")
DEFAULT_TEMPLATE = "survey_invite"


@dataclass(frozen=True, slots=True)
class NewSurvey:
    name: str
    question: str
    answers: tuple[str, ...]  # the valid answers as configured, e.g. ("1", "2", "3", "4", "5")
    reply_window_s: int
    template: str = DEFAULT_TEMPLATE


@dataclass(frozen=True, slots=True)
class Survey:
    id: UUID
    name: str
    question: str
    answers: tuple[str, ...]
    reply_window_s: int
    template: str
    status: str  # one of SURVEY_STATUSES
    created_at: datetime


class OpenInvite(NamedTuple):
    """The survey a number may be answering now (unpacks as ``(survey_id, answers)``)."""

    survey_id: UUID
    answers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SurveyReply:
    survey_id: UUID
    msisdn: str
    answer: str | None
    comment: str | None
    inbound_id: UUID | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class SurveyComment:
    msisdn: str  # masked (mask_msisdn)
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SurveyResults:
    survey_id: UUID
    invited: int  # recipients whose invitation message was made
    replied: int  # recipients whose reply holds a valid answer
    response_rate: float  # replied / invited (0.0 when nobody is invited)
    #: every valid answer, in the survey's order, with how many replies hold it (0 if none)
    counts: Mapping[str, int] = field(default_factory=dict)
    comments: tuple[SurveyComment, ...] = ()  # oldest first, at most the limit asked for
    comments_total: int = 0


# --- SQL ------------------------------------------------------------------------------------

_SURVEY_COLUMNS = "id, name, question, answers, reply_window_s, template, status, created_at"

_CREATE = f"""
INSERT INTO surveys (name, question, answers, reply_window_s, template)
VALUES ($1, $2, $3::text[], $4, $5)
RETURNING {_SURVEY_COLUMNS}
"""

_GET = f"SELECT {_SURVEY_COLUMNS} FROM surveys WHERE id = $1"

_SET_STATUS = f"""
UPDATE surveys SET status = $2
WHERE id = $1 AND ($3::text[] IS NULL OR status = ANY($3::text[]))
RETURNING {_SURVEY_COLUMNS}
"""

_ADD_RECIPIENTS = """
INSERT INTO survey_recipients (survey_id, msisdn)
SELECT $1, m FROM unnest($2::text[]) AS u(m)
ON CONFLICT (survey_id, msisdn) DO NOTHING
RETURNING msisdn
"""

_WITHOUT_MESSAGE = """
SELECT msisdn FROM survey_recipients
WHERE survey_id = $1 AND msisdn = ANY($2::text[]) AND message_id IS NULL
ORDER BY msisdn
"""

_ATTACH = """
UPDATE survey_recipients AS r SET message_id = u.message_id
FROM unnest($2::text[], $3::uuid[]) AS u(msisdn, message_id)
WHERE r.survey_id = $1 AND r.msisdn = u.msisdn AND r.message_id IS NULL
RETURNING r.msisdn
"""

_FORGET = """
DELETE FROM survey_recipients
WHERE survey_id = $1 AND msisdn = ANY($2::text[]) AND message_id IS NULL
RETURNING msisdn
"""

# The window test is repeated in _RECORD_REPLY; keep the two alike.
_OPEN_INVITE = """
SELECT r.survey_id, s.answers
FROM survey_recipients r
JOIN surveys s ON s.id = r.survey_id
WHERE r.msisdn = $1 AND r.message_id IS NOT NULL AND s.status <> 'closed'
  AND r.sent_at <= $2::timestamptz
  AND $2::timestamptz <= r.sent_at + make_interval(secs => s.reply_window_s)
ORDER BY r.sent_at DESC, r.survey_id
LIMIT 1
"""

# Inserts nothing outside the window, for a closed survey, or for an answer that is not one
# of the survey's; a reply older than the stored one changes nothing (module doc of 0008).
_RECORD_REPLY = """
INSERT INTO survey_replies AS p (survey_id, msisdn, answer, comment, inbound_id, received_at)
SELECT r.survey_id, r.msisdn, $3::text, $4::text, $5::uuid, $6::timestamptz
FROM survey_recipients r
JOIN surveys s ON s.id = r.survey_id
WHERE r.survey_id = $1 AND r.msisdn = $2 AND r.message_id IS NOT NULL
  AND s.status <> 'closed'
  AND r.sent_at <= $6::timestamptz
  AND $6::timestamptz <= r.sent_at + make_interval(secs => s.reply_window_s)
  AND ($3::text IS NULL OR $3::text = ANY(s.answers))
  AND ($3::text IS NOT NULL OR $4::text IS NOT NULL)
ON CONFLICT (survey_id, msisdn) DO UPDATE SET
    answer = COALESCE(EXCLUDED.answer, p.answer),
    comment = COALESCE(EXCLUDED.comment, p.comment),
    inbound_id = EXCLUDED.inbound_id,
    received_at = EXCLUDED.received_at
WHERE EXCLUDED.received_at >= p.received_at
RETURNING p.msisdn
"""

_REPLY = """
SELECT survey_id, msisdn, answer, comment, inbound_id, received_at
FROM survey_replies WHERE survey_id = $1 AND msisdn = $2
"""

_TOTALS = """
SELECT s.answers,
       (SELECT count(*) FROM survey_recipients r
        WHERE r.survey_id = s.id AND r.message_id IS NOT NULL) AS invited,
       (SELECT count(*) FROM survey_replies p
        WHERE p.survey_id = s.id AND p.answer IS NOT NULL) AS replied,
       (SELECT count(*) FROM survey_replies p
        WHERE p.survey_id = s.id AND p.comment IS NOT NULL) AS comments
FROM surveys s WHERE s.id = $1
"""

_COUNTS = """
SELECT answer, count(*) AS n FROM survey_replies
WHERE survey_id = $1 AND answer IS NOT NULL
GROUP BY answer
"""

_COMMENTS = """
SELECT msisdn, comment, received_at FROM survey_replies
WHERE survey_id = $1 AND comment IS NOT NULL
ORDER BY received_at, msisdn
LIMIT $2
"""


def _survey(row: Any) -> Survey:
    return Survey(
        id=row["id"],
        name=row["name"],
        question=row["question"],
        answers=tuple(row["answers"]),
        reply_window_s=row["reply_window_s"],
        template=row["template"],
        status=row["status"],
        created_at=row["created_at"],
    )


def _reply(row: Any) -> SurveyReply:
    return SurveyReply(
        survey_id=row["survey_id"],
        msisdn=row["msisdn"],
        answer=row["answer"],
        comment=row["comment"],
        inbound_id=row["inbound_id"],
        received_at=row["received_at"],
    )


class SurveyStore:
    """All reads and writes of surveys, recipients and replies."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, new: NewSurvey) -> Survey:
        """Insert a ``draft`` survey."""
        row = await self._pool.fetchrow(_CREATE, new.name, new.question, list(new.answers),
                                        new.reply_window_s, new.template)
        return _survey(row)

    async def get(self, survey_id: UUID) -> Survey | None:
        row = await self._pool.fetchrow(_GET, survey_id)
        return None if row is None else _survey(row)

    async def set_status(self, survey_id: UUID, status: str, *,
                         only_from: Sequence[str] | None = None) -> Survey | None:
        """Set the status (when the current one is in ``only_from``, if given); the updated
        survey, or None when there is no such survey or its status was not in ``only_from``."""
        if status not in SURVEY_STATUSES:
            raise ValueError(f"status must be one of {', '.join(SURVEY_STATUSES)}")
        row = await self._pool.fetchrow(_SET_STATUS, survey_id, status,
                                        None if only_from is None else list(only_from))
        return None if row is None else _survey(row)

    async def add_recipients(self, survey_id: UUID, msisdns: Sequence[str]) -> list[str]:
        """Invite ``msisdns`` (E.164, each once per call) in one statement; the numbers that
        were new to the survey. Numbers already invited are left as they are."""
        if not msisdns:
            return []
        rows = await self._pool.fetch(_ADD_RECIPIENTS, survey_id, list(msisdns))
        return [r["msisdn"] for r in rows]

    async def without_message(self, survey_id: UUID, msisdns: Sequence[str]) -> list[str]:
        """Of ``msisdns``, the recipients whose invitation message is not made yet."""
        if not msisdns:
            return []
        rows = await self._pool.fetch(_WITHOUT_MESSAGE, survey_id, list(msisdns))
        return [r["msisdn"] for r in rows]

    async def attach_messages(self, survey_id: UUID,
                              sent: Sequence[tuple[str, UUID]]) -> int:
        """Record each recipient's invitation message (msisdn, message id); how many were
        recorded (a recipient that already has one keeps it)."""
        if not sent:
            return 0
        rows = await self._pool.fetch(_ATTACH, survey_id, [m for m, _ in sent],
                                      [i for _, i in sent])
        return len(rows)

    async def forget_recipients(self, survey_id: UUID, msisdns: Sequence[str]) -> int:
        """Remove recipients whose message could not be made (never one that has one)."""
        if not msisdns:
            return 0
        rows = await self._pool.fetch(_FORGET, survey_id, list(msisdns))
        return len(rows)

    async def open_invite_for(self, msisdn: str, at: datetime) -> OpenInvite | None:
        """The most recently sent invitation of ``msisdn`` (E.164) whose reply window
        ``[sent_at, sent_at + reply_window_s]`` covers ``at``, of a survey not closed."""
        row = await self._pool.fetchrow(_OPEN_INVITE, msisdn, at)
        return None if row is None else OpenInvite(row["survey_id"], tuple(row["answers"]))

    async def record_reply(self, survey_id: UUID, msisdn: str, *, answer: str | None,
                           comment: str | None, received_at: datetime,
                           inbound_id: UUID | None = None) -> bool:
        """Store a reply (see ``sql/0008_surveys.sql`` for how it merges with an earlier one).

        False when nothing was stored: ``received_at`` is outside the recipient's window, the
        survey is closed, ``msisdn`` was not invited, ``answer`` is not one of the survey's
        answers, both are None, or a newer reply is already stored.
        """
        row = await self._pool.fetchrow(_RECORD_REPLY, survey_id, msisdn, answer, comment,
                                        inbound_id, received_at)
        if row is None:
            log.debug("survey %s: reply from %s not stored", survey_id, mask_msisdn(msisdn))
        return row is not None

    async def reply(self, survey_id: UUID, msisdn: str) -> SurveyReply | None:
        row = await self._pool.fetchrow(_REPLY, survey_id, msisdn)
        return None if row is None else _reply(row)

    async def results(self, survey_id: UUID, *,
                      comment_limit: int = 1000) -> SurveyResults | None:
        """Counts per answer, response rate and comments; None when there is no such survey."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                   readonly=True):
            totals = await conn.fetchrow(_TOTALS, survey_id)
            if totals is None:
                return None
            found = {r["answer"]: r["n"] for r in await conn.fetch(_COUNTS, survey_id)}
            comments = await conn.fetch(_COMMENTS, survey_id, comment_limit)
        invited: int = totals["invited"]
        replied: int = totals["replied"]
        return SurveyResults(
            survey_id=survey_id,
            invited=invited,
            replied=replied,
            response_rate=round(replied / invited, 4) if invited else 0.0,
            counts={a: int(found.get(a, 0)) for a in totals["answers"]},
            comments=tuple(SurveyComment(msisdn=mask_msisdn(r["msisdn"]), text=r["comment"],
                                         at=r["received_at"]) for r in comments),
            comments_total=totals["comments"],
        )
