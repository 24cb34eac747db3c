"""Advertising consent: the append-only ledger, the current state, the Do-Not-Call list.

Every consent request (a refusal ``TC``, an opt-in ``DK QC``, an import, an API call) becomes
one ``consent_ledger`` row, also when it changes nothing: that is the audit Law 91/2025 asks
for. ``consent_state`` holds the current decision per number and is written in the same
transaction, only when the request moves it, so it always equals the action of the newest
request (by the time the subscriber asked, ``at``): a request older than one already recorded
(an MO flushed late) is recorded with ``changed = false`` and leaves the state alone. Requests
for one number are serialised with a transaction-scoped advisory lock, so two concurrent TC
cannot both count as the change. A request whose (action, source, source_ref) is recorded
already (the same MO handled again after a crash) is not recorded twice: its first row is
returned, marked ``replayed``.

A number is suppressed for advertising when it refused (``"opted out"``) or is on the
Do-Not-Call list for SMS (``"Do-Not-Call"``); an opt-in does not override the DNC list. Numbers
are E.164 digits (``84…``), as everywhere in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from gateway.masking import mask_msisdn

log = logging.getLogger("smsgw.store.consent")

#: Reasons :meth:`ConsentStore.is_suppressed` gives.
SUPPRESSED_OPTED_OUT = "opted out"
SUPPRESSED_DNC = "Do-Not-Call"

#: First key of the two-int advisory locks taken per number ("CNST").
_CONSENT_LOCK_SPACE = 0x434E5354


class ConsentAction(StrEnum):
    """What a consent request asks for."""

    REFUSE = "refuse"  # no more advertising (TC)
    OPT_IN = "optin"  # advertising welcome again (DK QC)


class ConsentSource(StrEnum):
    """Where a consent request came from."""

    SMS = "sms"  # a keyword MO; source_ref = the inbound message id
    IMPORT = "import"  # a file loaded by the care team
    API = "api"  # an operator system through the HTTP API
    DNC = "dnc"  # derived from the national Do-Not-Call list


class DncChannels(StrEnum):
    """What a Do-Not-Call registration covers."""

    ALL = "all"  # DK DNC
    SMS = "sms"  # DK DNC S
    VOICE = "voice"  # DK DNC V: calls only, advertising SMS still allowed


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """One row of the ledger."""

    id: int
    msisdn: str
    action: ConsentAction
    scope: str
    source: ConsentSource
    source_ref: str | None
    at: datetime  # when the subscriber asked
    effective_at: datetime  # from when it applies
    changed: bool  # whether it moved the current state
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ConsentState:
    msisdn: str
    refused: bool
    changed_at: datetime  # ``at`` of the request that set it
    ledger_id: int


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """The outcome of one request: its ledger row and the state once it was recorded."""

    entry: ConsentEntry
    refused: bool  # the current state (False also when the number never decided)
    #: the ``at`` of the other SMS refusal of this number nearest in time to this request
    #: (None: no other one recorded); lets the refusal action confirm only once
    nearest_sms_refusal_at: datetime | None
    #: the same request (action, source, source_ref) was recorded already, e.g. an MO handled
    #: again after a crash: ``entry`` is that first row and nothing new was written
    replayed: bool = False

    @property
    def changed(self) -> bool:
        return self.entry.changed


# --- SQL ------------------------------------------------------------------------------------

_LOCK = "SELECT pg_advisory_xact_lock($1::integer, hashtext($2))"

_ENTRY_COLUMNS = (
    "id, msisdn, action, scope, source, source_ref, at, effective_at, changed, recorded_at"
)

# The same request recorded before (only requests with a source_ref can be recognised).
_SAME_REQUEST = f"""
SELECT {_ENTRY_COLUMNS} FROM consent_ledger
WHERE msisdn = $1 AND action = $2 AND source = $3 AND source_ref = $4
ORDER BY id LIMIT 1
"""

# Read once the number is locked: its state, whether a newer request is recorded, and the SMS
# refusal nearest in time to this one ($3: the id of this request's row if it has one already).
_BEFORE = """
SELECT
    (SELECT refused FROM consent_state WHERE msisdn = $1) AS refused,
    EXISTS (SELECT 1 FROM consent_ledger WHERE msisdn = $1 AND at > $2) AS stale,
    (SELECT at FROM consent_ledger
     WHERE msisdn = $1 AND action = 'refuse' AND source = 'sms' AND id IS DISTINCT FROM $3
     ORDER BY abs(extract(epoch FROM at - $2)), id DESC
     LIMIT 1) AS nearest_sms_refusal_at
"""

_INSERT_ENTRY = f"""
INSERT INTO consent_ledger (msisdn, action, source, source_ref, at, effective_at, changed)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING {_ENTRY_COLUMNS}
"""

_SET_STATE = """
INSERT INTO consent_state (msisdn, refused, changed_at, ledger_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (msisdn) DO UPDATE
    SET refused = EXCLUDED.refused, changed_at = EXCLUDED.changed_at,
        ledger_id = EXCLUDED.ledger_id
"""

_STATE = "SELECT msisdn, refused, changed_at, ledger_id FROM consent_state WHERE msisdn = $1"

_HISTORY = f"SELECT {_ENTRY_COLUMNS} FROM consent_ledger WHERE msisdn = $1 ORDER BY at, id"

# Numbers of $1 that are suppressed, with why (refused first, then the DNC list).
_SUPPRESSED = """
SELECT n.msisdn, COALESCE(s.refused, false) AS refused, d.msisdn IS NOT NULL AS dnc
FROM (SELECT DISTINCT x AS msisdn FROM unnest($1::text[]) AS x) AS n
LEFT JOIN consent_state s ON s.msisdn = n.msisdn
LEFT JOIN dnc_numbers d ON d.msisdn = n.msisdn AND d.channels <> 'voice'
WHERE s.refused OR d.msisdn IS NOT NULL
"""

_ADD_DNC = """
INSERT INTO dnc_numbers (msisdn, channels, source)
SELECT DISTINCT ON (x) x, $2, $3 FROM unnest($1::text[]) AS x
ON CONFLICT (msisdn) DO UPDATE SET channels = EXCLUDED.channels, source = EXCLUDED.source
"""


# --- helpers --------------------------------------------------------------------------------


def _entry(row: Any) -> ConsentEntry:
    return ConsentEntry(
        id=row["id"],
        msisdn=row["msisdn"],
        action=ConsentAction(row["action"]),
        scope=row["scope"],
        source=ConsentSource(row["source"]),
        source_ref=row["source_ref"],
        at=row["at"],
        effective_at=row["effective_at"],
        changed=row["changed"],
        recorded_at=row["recorded_at"],
    )


def _reason(refused: bool, dnc: bool) -> str | None:
    if refused:
        return SUPPRESSED_OPTED_OUT
    return SUPPRESSED_DNC if dnc else None


def _check_time(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


# --- the store ------------------------------------------------------------------------------


class ConsentStore:
    """All reads and writes of consent and of the Do-Not-Call list."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def refuse(
        self,
        msisdn: str,
        *,
        source: ConsentSource,
        source_ref: str | None,
        at: datetime,
        effective_at: datetime | None = None,
    ) -> ConsentChange:
        """Record a refusal of advertising (effective at once unless ``effective_at``)."""
        return await self._record(msisdn, ConsentAction.REFUSE, source, source_ref, at,
                                  effective_at)

    async def opt_in(
        self,
        msisdn: str,
        *,
        source: ConsentSource,
        source_ref: str | None,
        at: datetime,
        effective_at: datetime | None = None,
    ) -> ConsentChange:
        """Record an opt-in to advertising (a DNC registration still wins over it)."""
        return await self._record(msisdn, ConsentAction.OPT_IN, source, source_ref, at,
                                  effective_at)

    async def _record(
        self,
        msisdn: str,
        action: ConsentAction,
        source: ConsentSource,
        source_ref: str | None,
        at: datetime,
        effective_at: datetime | None,
    ) -> ConsentChange:
        _check_time("at", at)
        effective = at if effective_at is None else effective_at
        _check_time("effective_at", effective)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK, _CONSENT_LOCK_SPACE, msisdn)
            same = None
            if source_ref is not None:
                same = await conn.fetchrow(_SAME_REQUEST, msisdn, action.value, source.value,
                                           source_ref)
            if same is not None:
                return await self._replay(conn, _entry(same))
            before = await conn.fetchrow(_BEFORE, msisdn, at, None)
            previous: bool | None = before["refused"]
            refused = action is ConsentAction.REFUSE
            changed = not before["stale"] and previous != refused
            row = await conn.fetchrow(_INSERT_ENTRY, msisdn, action.value, source.value,
                                      source_ref, at, effective, changed)
            entry = _entry(row)
            if changed:
                await conn.execute(_SET_STATE, msisdn, refused, at, entry.id)
        log.info("consent %s of %s from %s recorded (ledger %d, %s)", action.value,
                 mask_msisdn(msisdn), source.value, entry.id,
                 "state changed" if changed else "state unchanged")
        return ConsentChange(
            entry=entry,
            refused=refused if changed else bool(previous),
            nearest_sms_refusal_at=before["nearest_sms_refusal_at"],
        )

    @staticmethod
    async def _replay(conn: Any, entry: ConsentEntry) -> ConsentChange:
        """The outcome of a request recorded before, as seen now; writes nothing."""
        before = await conn.fetchrow(_BEFORE, entry.msisdn, entry.at, entry.id)
        log.info("consent %s of %s from %s already recorded (ledger %d)", entry.action.value,
                 mask_msisdn(entry.msisdn), entry.source.value, entry.id)
        return ConsentChange(entry=entry, refused=bool(before["refused"]),
                             nearest_sms_refusal_at=before["nearest_sms_refusal_at"],
                             replayed=True)

    async def state(self, msisdn: str) -> ConsentState | None:
        """The current decision of ``msisdn``; None when it never decided."""
        row = await self._pool.fetchrow(_STATE, msisdn)
        if row is None:
            return None
        return ConsentState(msisdn=row["msisdn"], refused=row["refused"],
                            changed_at=row["changed_at"], ledger_id=row["ledger_id"])

    async def history(self, msisdn: str) -> list[ConsentEntry]:
        """Every recorded request of ``msisdn``, oldest first (by ``at``)."""
        return [_entry(r) for r in await self._pool.fetch(_HISTORY, msisdn)]

    async def is_suppressed(self, msisdn: str) -> str | None:
        """Why advertising must not go to ``msisdn`` ("opted out", "Do-Not-Call"), or None."""
        return (await self.suppressed_many([msisdn])).get(msisdn)

    async def suppressed_many(self, msisdns: Iterable[str]) -> dict[str, str]:
        """The suppressed numbers among ``msisdns`` with their reason, in one query."""
        numbers = list(msisdns)
        if not numbers:
            return {}
        rows = await self._pool.fetch(_SUPPRESSED, numbers)
        found: dict[str, str] = {}
        for row in rows:
            reason = _reason(row["refused"], row["dnc"])
            if reason is not None:
                found[row["msisdn"]] = reason
        return found

    async def add_dnc(
        self, msisdns: Sequence[str], *, source: str, channels: DncChannels = DncChannels.ALL
    ) -> int:
        """Put numbers on the Do-Not-Call list (a number already there takes these values)."""
        if not msisdns:
            return 0
        status: str = await self._pool.execute(_ADD_DNC, list(msisdns), channels.value, source)
        return int(status.rsplit(" ", 1)[-1])
