"""Self-service requests made by SMS (``service_requests``, sql/0010_service_requests.sql).

Life of a request::

    awaiting_confirmation ──Y in time──▶ confirmed ──webhook 2xx──▶ posted
            │                               │
            └──window passed / replaced──▶ expired      └──max attempts──▶ failed

A non-destructive request starts ``confirmed``. Only one request of a number awaits its
confirmation at a time: a new destructive request expires the previous one (``last_error``
says which replaced it), so "Y" always confirms what the last prompt asked. Writes that start
from a given status check it in their ``WHERE`` clause, so two workers (or a late job and the
sweeper) cannot both move a row.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from gateway.masking import mask_msisdn

log = logging.getLogger("smsgw.store.service_requests")

#: Characters of a reference after "YC": no 0/O, 1/I/L, 2/Z, 5/S, 8/B look-alikes.
REFERENCE_ALPHABET = "34679ACDEFGHJKMNPQRTUVWXY"
REFERENCE_PREFIX = "YC"
REFERENCE_LENGTH = 8  # characters after the prefix (25**8 ≈ 1.5e11 references)
REFERENCE_RE = re.compile(rf"{REFERENCE_PREFIX}[{REFERENCE_ALPHABET}]{{{REFERENCE_LENGTH}}}")

#: First key of the two-int advisory locks taken per number ("SVRQ").
_REQUEST_LOCK_SPACE = 0x53565251
#: Fresh references tried before giving up (a collision is ~1e-11 per insert).
_REFERENCE_TRIES = 5


class RequestKind(StrEnum):
    """What the subscriber asks for (``service_requests.type``)."""

    SUSPEND = "suspend"  # TAM NGUNG
    RECONNECT = "reconnect"  # MO LAI
    SIM_SWAP = "sim_swap"  # DOI SIM
    TO_POSTPAID = "to_postpaid"  # CHUYEN TRA SAU
    TO_PREPAID = "to_prepaid"  # CHUYEN TRA TRUOC
    CHANGE_ADDRESS = "change_address"  # DOI DIA CHI <address>


class RequestStatus(StrEnum):
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    CONFIRMED = "confirmed"
    EXPIRED = "expired"
    POSTED = "posted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    """One row of ``service_requests``."""

    id: int
    reference: str
    kind: RequestKind  # column ``type``
    msisdn: str
    args: Mapping[str, Any]  # e.g. {"address": "..."} for change_address
    status: RequestStatus
    inbound_id: UUID | None
    confirm_by: datetime | None
    requested_at: datetime  # the MO's received_at
    created_at: datetime
    confirmed_at: datetime | None
    posted_at: datetime | None
    attempts: int  # webhook posts tried
    last_error: str | None


def new_reference() -> str:
    """A random reference, e.g. ``YC7KQ4MXTA``."""
    tail = "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(REFERENCE_LENGTH))
    return REFERENCE_PREFIX + tail


def normalise_reference(text: str) -> str | None:
    """A reference as a person may type it (lower case, spaces, "-") → canonical, or None."""
    candidate = re.sub(r"[\s\-]", "", text).upper()
    return candidate if REFERENCE_RE.fullmatch(candidate) else None


# --- SQL ------------------------------------------------------------------------------------

_COLUMNS = (
    "id, reference, type, msisdn, args::text AS args, status, inbound_id, confirm_by, "
    "requested_at, created_at, confirmed_at, posted_at, attempts, last_error"
)

_LOCK = "SELECT pg_advisory_xact_lock($1::integer, hashtext($2))"

_BY_INBOUND = f"SELECT {_COLUMNS} FROM service_requests WHERE inbound_id = $1"

_INSERT = f"""
INSERT INTO service_requests (reference, type, msisdn, args, status, inbound_id, confirm_by,
                              requested_at, confirmed_at)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9)
ON CONFLICT (inbound_id) WHERE inbound_id IS NOT NULL DO NOTHING
RETURNING {_COLUMNS}
"""

# A newer destructive request replaces the one still awaiting confirmation.
_SUPERSEDE = """
UPDATE service_requests SET status = 'expired', last_error = $3
WHERE msisdn = $1 AND status = 'awaiting_confirmation' AND id <> $2
"""

_GET = f"SELECT {_COLUMNS} FROM service_requests WHERE id = $1"
_GET_BY_REFERENCE = f"SELECT {_COLUMNS} FROM service_requests WHERE reference = $1"

_PENDING = f"""
SELECT {_COLUMNS} FROM service_requests
WHERE msisdn = $1 AND status = 'awaiting_confirmation' AND confirm_by >= $2
ORDER BY requested_at DESC, id DESC
LIMIT 1
"""

_CONFIRM = f"""
UPDATE service_requests SET status = 'confirmed', confirmed_at = $2
WHERE id = $1 AND status = 'awaiting_confirmation' AND confirm_by >= $2
RETURNING {_COLUMNS}
"""

_EXPIRE = f"""
UPDATE service_requests SET status = 'expired'
WHERE status = 'awaiting_confirmation' AND confirm_by < $1 AND ($2::text IS NULL OR msisdn = $2)
RETURNING {_COLUMNS}
"""

_POSTED = f"""
UPDATE service_requests SET status = 'posted', posted_at = $2, attempts = attempts + 1
WHERE id = $1 AND status = 'confirmed'
RETURNING {_COLUMNS}
"""

# One failed post; the request fails when this was the last attempt allowed ($3).
_ATTEMPT = f"""
UPDATE service_requests
SET attempts = attempts + 1, last_error = $2,
    status = CASE WHEN attempts + 1 >= $3 THEN 'failed' ELSE status END
WHERE id = $1 AND status = 'confirmed'
RETURNING {_COLUMNS}
"""

_FAILED = f"""
UPDATE service_requests SET status = 'failed', last_error = $2
WHERE id = $1 AND status = 'confirmed'
RETURNING {_COLUMNS}
"""

_UNPOSTED = """
SELECT id FROM service_requests
WHERE status = 'confirmed' AND confirmed_at < $1
ORDER BY confirmed_at, id
LIMIT $2
"""


# --- helpers --------------------------------------------------------------------------------


def _request(row: Any) -> ServiceRequest:
    args = json.loads(row["args"]) if row["args"] is not None else {}
    return ServiceRequest(
        id=row["id"],
        reference=row["reference"],
        kind=RequestKind(row["type"]),
        msisdn=row["msisdn"],
        args=args,
        status=RequestStatus(row["status"]),
        inbound_id=row["inbound_id"],
        confirm_by=row["confirm_by"],
        requested_at=row["requested_at"],
        created_at=row["created_at"],
        confirmed_at=row["confirmed_at"],
        posted_at=row["posted_at"],
        attempts=row["attempts"],
        last_error=row["last_error"],
    )


def _check_time(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware")


def _maybe(row: Any) -> ServiceRequest | None:
    return None if row is None else _request(row)


# --- the store ------------------------------------------------------------------------------


class ServiceRequestStore:
    """All reads and writes of ``service_requests``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        kind: RequestKind,
        msisdn: str,
        *,
        requested_at: datetime,
        args: Mapping[str, Any] | None = None,
        inbound_id: UUID | None = None,
        confirm_by: datetime | None = None,
    ) -> ServiceRequest:
        """Record a request: awaiting confirmation until ``confirm_by`` when given (and then
        the number's other awaiting request expires), else confirmed at ``requested_at``.

        The same ``inbound_id`` twice returns the first request unchanged.
        """
        _check_time("requested_at", requested_at)
        _check_time("confirm_by", confirm_by)
        status = (RequestStatus.CONFIRMED if confirm_by is None
                  else RequestStatus.AWAITING_CONFIRMATION)
        confirmed_at = requested_at if confirm_by is None else None
        payload = json.dumps(dict(args or {}), ensure_ascii=False)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK, _REQUEST_LOCK_SPACE, msisdn)
            if inbound_id is not None:
                existing = await conn.fetchrow(_BY_INBOUND, inbound_id)
                if existing is not None:
                    return _request(existing)
            row = await self._insert(conn, (kind.value, msisdn, payload, status.value,
                                            inbound_id, confirm_by, requested_at, confirmed_at))
            if row is None:  # the same MO under another number: keep the first request
                return _request(await conn.fetchrow(_BY_INBOUND, inbound_id))
            request = _request(row)
            if confirm_by is not None:
                await conn.execute(_SUPERSEDE, msisdn, request.id,
                                   f"replaced by {request.reference}")
        log.info("service request %s (%s) of %s recorded as %s", request.reference,
                 request.kind.value, mask_msisdn(msisdn), request.status.value)
        return request

    @staticmethod
    async def _insert(conn: Any, values: tuple[Any, ...]) -> Any:
        for _ in range(_REFERENCE_TRIES):
            try:
                async with conn.transaction():  # a savepoint: a collision keeps the outer one
                    return await conn.fetchrow(_INSERT, new_reference(), *values)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "service_requests_reference_key":
                    raise
        raise RuntimeError(f"no free request reference after {_REFERENCE_TRIES} tries")

    async def get(self, request_id: int) -> ServiceRequest | None:
        return _maybe(await self._pool.fetchrow(_GET, request_id))

    async def get_by_reference(self, reference: str) -> ServiceRequest | None:
        """The request of ``reference`` (as typed: case, spaces and dashes do not matter)."""
        canonical = normalise_reference(reference)
        if canonical is None:
            return None
        return _maybe(await self._pool.fetchrow(_GET_BY_REFERENCE, canonical))

    async def pending_confirmation(self, msisdn: str, at: datetime) -> ServiceRequest | None:
        """The newest request of ``msisdn`` awaiting confirmation whose window is open at
        ``at`` (``confirm_by`` ≥ ``at``)."""
        _check_time("at", at)
        return _maybe(await self._pool.fetchrow(_PENDING, msisdn, at))

    async def confirm(self, request_id: int, *, at: datetime) -> ServiceRequest | None:
        """Confirm an awaiting request whose window is still open at ``at``; None when it is
        not awaiting any more or its window has passed."""
        _check_time("at", at)
        request = _maybe(await self._pool.fetchrow(_CONFIRM, request_id, at))
        if request is not None:
            log.info("service request %s confirmed", request.reference)
        return request

    async def expire_overdue(self, at: datetime, *, msisdn: str | None = None
                             ) -> list[ServiceRequest]:
        """Expire the requests (of ``msisdn``, or all) whose window closed before ``at``."""
        _check_time("at", at)
        expired = [_request(r) for r in await self._pool.fetch(_EXPIRE, at, msisdn)]
        if expired:
            log.info("%d service request(s) expired unconfirmed: %s", len(expired),
                     ", ".join(r.reference for r in expired[:20]))
        return expired

    async def mark_posted(self, request_id: int, *, at: datetime) -> ServiceRequest | None:
        """The back office took the request (None: it was not 'confirmed')."""
        _check_time("at", at)
        return _maybe(await self._pool.fetchrow(_POSTED, request_id, at))

    async def record_attempt(self, request_id: int, error: str, *, max_attempts: int
                             ) -> ServiceRequest | None:
        """Count one failed post; the request becomes 'failed' when it was attempt
        ``max_attempts``. None: the request was not 'confirmed'."""
        return _maybe(await self._pool.fetchrow(_ATTEMPT, request_id, error[:1000],
                                                max_attempts))

    async def mark_failed(self, request_id: int, reason: str) -> ServiceRequest | None:
        """Give up on a confirmed request (None: it was not 'confirmed')."""
        return _maybe(await self._pool.fetchrow(_FAILED, request_id, reason[:1000]))

    async def unposted(self, *, confirmed_before: datetime, limit: int = 500) -> list[int]:
        """Ids of confirmed requests not posted yet, confirmed before ``confirmed_before``."""
        _check_time("confirmed_before", confirmed_before)
        return [r["id"] for r in await self._pool.fetch(_UNPOSTED, confirmed_before, limit)]
