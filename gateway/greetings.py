"""Birthday wishes and holiday greetings (care programs of issue 4, items 7 and 8).

Pure rules first -- whose birthday is celebrated on a date, which care days fall on it -- then
:class:`GreetingRunner`, which the arq cron jobs of ``jobs/greetings.py`` call every few
minutes all day. A run does nothing before ``send_at`` local time (Asia/Ho_Chi_Minh); after
it, it greets today's subscribers that have not been greeted yet. So a gateway that was down
at 08:00 catches up later the same day, a run at 23:59 still sends, and the next day's runs
only look at the next day.

"Once per subscriber per period" is the ledger's job (``greetings_sent``, see
gateway/store/greetings.py): a subscriber is claimed by inserting its row before its message
is made, and the message carries the idempotency key ``<kind>:<period>:<msisdn>``, so a claim
whose message was never recorded (a crash in between) is retried without ever doubling it.
"""

from __future__ import annotations

import asyncio
import calendar as _calendar
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg

from gateway.intake import Intake, IntakeError, SendRequest
from gateway.lunar import can_chi_year, solar_to_lunar
from gateway.masking import mask_msisdn
from gateway.store.greetings import ClaimedPage, GreetingStore, Recipient
from gateway.store.messages import MessageRecord

__all__ = [
    "DEFAULT_CALENDAR",
    "TIERS_VANG_UP",
    "CareDay",
    "GreetingRunner",
    "birthday_matches",
    "calendar_from_names",
    "care_days_on",
    "parse_send_at",
]

log = logging.getLogger("smsgw.greetings")

BIRTHDAY_KIND = "birthday"
BIRTHDAY_TEMPLATE = "birthday"
HOLIDAY_KIND_PREFIX = "holiday:"

#: "tier ≥ Vàng" (loyalty tiers from low to high: Thân thiết, Bạc, Titan, Vàng, Kim cương).
TIERS_VANG_UP: tuple[str, ...] = ("Vàng", "Kim cương")

_RULE_RE = re.compile(r"^(solar|lunar):(\d{2})-(\d{2})$")
_NAME_RE = re.compile(r"^[a-z0-9_]{1,40}$")
_SEND_AT_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


# --------------------------------------------------------------------------- birthdays


def birthday_matches(today: date) -> list[tuple[int, int]]:
    """The (month, day) birthdays celebrated on ``today``.

    29 February birthdays are celebrated on 28 February in years without a 29 February.
    """
    matches = [(today.month, today.day)]
    if today.month == 2 and today.day == 28 and not _calendar.isleap(today.year):
        matches.append((2, 29))
    return matches


# --------------------------------------------------------------------------- care days


@dataclass(frozen=True, slots=True)
class CareDay:
    """A day of the care calendar.

    ``date_rule`` is ``"solar:MM-DD"`` or ``"lunar:MM-DD"`` (a day of a regular lunar month,
    never a leap one; a lunar day 30 only happens in 30-day months). ``tiers`` restricts the
    greeting to those loyalty tiers (empty = every tier; compared trimmed and case-blind),
    ``segment`` to one segment ("" = any).
    """

    name: str
    template: str
    date_rule: str
    tiers: tuple[str, ...] = ()
    segment: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"care day name {self.name!r}: use 1-40 of a-z, 0-9, _")
        match = _RULE_RE.fullmatch(self.date_rule)
        if match is None:
            raise ValueError(f"care day {self.name!r}: date_rule {self.date_rule!r} is not "
                             "'solar:MM-DD' or 'lunar:MM-DD'")
        month, day = int(match.group(2)), int(match.group(3))
        # a solar rule may name 29 February (celebrated in leap years only)
        top = 0 if not 1 <= month <= 12 else 30 if match.group(1) == "lunar" \
            else _calendar.monthrange(2024, month)[1]
        if not 1 <= day <= top:
            raise ValueError(f"care day {self.name!r}: {self.date_rule!r} is not a day of "
                             "the year")
        if not self.template:
            raise ValueError(f"care day {self.name!r} needs a template")

    @property
    def lunar(self) -> bool:
        return self.date_rule.startswith("lunar:")

    @property
    def month_day(self) -> tuple[int, int]:
        month, day = self.date_rule.split(":", 1)[1].split("-")
        return int(month), int(day)

    @property
    def kind(self) -> str:
        """Ledger kind of this care day's greetings, e.g. ``holiday:tet``."""
        return HOLIDAY_KIND_PREFIX + self.name


DEFAULT_CALENDAR: tuple[CareDay, ...] = (
    CareDay("tet", "holiday_tet", "lunar:01-01"),
    CareDay("trung_thu", "holiday_trung_thu", "lunar:08-15"),
    CareDay("8_3", "holiday_8_3", "solar:03-08"),
    CareDay("20_10", "holiday_20_10", "solar:10-20"),
    CareDay("20_11", "holiday_20_11", "solar:11-20"),
    CareDay("22_12", "holiday_22_12", "solar:12-22"),
)


def care_days_on(today: date, calendar: Iterable[CareDay] = DEFAULT_CALENDAR) -> list[CareDay]:
    """The care days of ``calendar`` that fall on ``today`` (lunar rules at UTC+7)."""
    days = list(calendar)
    lunar = solar_to_lunar(today) if any(d.lunar for d in days) else None
    out: list[CareDay] = []
    for day in days:
        if day.lunar:
            assert lunar is not None
            if not lunar.leap and (lunar.month, lunar.day) == day.month_day:
                out.append(day)
        elif (today.month, today.day) == day.month_day:
            out.append(day)
    return out


def calendar_from_names(names: Iterable[str], *, extra: Iterable[CareDay] = (),
                        tiered: Iterable[str] = (), tiers: tuple[str, ...] = TIERS_VANG_UP,
                        base: Iterable[CareDay] = DEFAULT_CALENDAR) -> tuple[CareDay, ...]:
    """A calendar from configuration: the care days of ``base`` named in ``names``, those
    named in ``tiered`` sent only to ``tiers``, then ``extra`` (replacing a day of the same
    name). Raises :class:`ValueError` on an unknown name."""
    wanted = list(names)
    restricted = set(tiered)
    by_name = {d.name: d for d in base}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown care day(s) {', '.join(unknown)}; known: "
                         f"{', '.join(by_name)}")
    stray = sorted(restricted - set(wanted))
    if stray:
        raise ValueError(f"tier-restricted care day(s) {', '.join(stray)} are not enabled")
    chosen = {n: replace(by_name[n], tiers=tiers) if n in restricted else by_name[n]
              for n in wanted}
    for day in extra:
        chosen[day.name] = day
    return tuple(chosen.values())


def parse_send_at(text: str) -> time:
    """``"08:00"`` → ``time(8, 0)`` (local wall-clock time of the greetings)."""
    match = _SEND_AT_RE.fullmatch(text.strip())
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"send time {text!r} is not HH:MM")
    return time(int(match.group(1)), int(match.group(2)))


# --------------------------------------------------------------------------- the runner


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Greeting:
    """One greeting program for one period: what to send and how to find its audience."""

    kind: str
    period: str
    template: str
    extra: Mapping[str, Any]
    claim: Callable[[str], Awaitable[ClaimedPage]]  # cursor → next claimed page


@dataclass(slots=True)
class _Tally:
    created: int = 0
    retried: int = 0
    failed: int = 0


class GreetingRunner:
    """Runs the birthday and holiday greetings; safe to run often, concurrently, anywhere.

    ``clock`` gives the current instant (an aware datetime; a naive one is taken as UTC);
    ``send_at`` is the local wall-clock time in ``tz`` before which nothing is sent.
    """

    def __init__(self, pool: asyncpg.Pool, intake: Intake, *, tz: str = "Asia/Ho_Chi_Minh",
                 send_at: time = time(8, 0), clock: Callable[[], datetime] = utc_now,
                 batch: int = 500, calendar: Sequence[CareDay] = DEFAULT_CALENDAR,
                 concurrency: int = 4, retry_after_s: float = 120.0) -> None:
        if batch < 1 or concurrency < 1:
            raise ValueError("batch and concurrency must be at least 1")
        self._store = GreetingStore(pool, retry_after_s=retry_after_s)
        self._intake = intake
        self._tz = ZoneInfo(tz)
        self._send_at = send_at
        self._clock = clock
        self._batch = batch
        self._calendar = tuple(calendar)
        self._slots = asyncio.Semaphore(concurrency)
        # one run of each program at a time in this process (cron ticks may overlap a long run)
        self._busy = {"birthdays": asyncio.Lock(), "holidays": asyncio.Lock()}

    @property
    def store(self) -> GreetingStore:
        return self._store

    def local_now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now.astimezone(self._tz)

    def _today(self) -> date | None:
        """Today's local date, or None before ``send_at``."""
        local = self.local_now()
        if local.time() < self._send_at:
            return None
        return local.date()

    async def run_birthdays(self) -> int:
        """Greet today's birthdays not greeted yet this year; returns messages created."""
        today = self._today()
        lock = self._busy["birthdays"]
        if today is None or lock.locked():
            return 0
        async with lock:
            period = str(today.year)
            total = 0
            for month, day in birthday_matches(today):
                async def claim(after: str, month: int = month, day: int = day) -> ClaimedPage:
                    return await self._store.claim_birthdays(
                        BIRTHDAY_KIND, period, month=month, day=day, after=after,
                        limit=self._batch)

                total += await self._run(_Greeting(
                    kind=BIRTHDAY_KIND, period=period, template=BIRTHDAY_TEMPLATE,
                    extra={}, claim=claim), label=f"birthdays {today} ({day:02d}/{month:02d})")
            return total

    async def run_holidays(self, calendar: Sequence[CareDay] | None = None) -> int:
        """Greet for today's care days (``calendar``, default the runner's); returns messages
        created."""
        today = self._today()
        lock = self._busy["holidays"]
        if today is None or lock.locked():
            return 0
        async with lock:
            days = care_days_on(today, self._calendar if calendar is None else calendar)
            if not days:
                return 0
            lunar_year = solar_to_lunar(today).year
            extra = {"year": today.year, "lunar_year": can_chi_year(lunar_year),
                     "date": today}
            period = today.isoformat()
            total = 0
            for care in days:
                async def claim(after: str, care: CareDay = care) -> ClaimedPage:
                    return await self._store.claim_audience(
                        care.kind, period, tiers=care.tiers, segment=care.segment,
                        after=after, limit=self._batch)

                total += await self._run(_Greeting(
                    kind=care.kind, period=period, template=care.template, extra=extra,
                    claim=claim), label=f"holiday {care.name} {period}")
            return total

    async def _run(self, greeting: _Greeting, *, label: str) -> int:
        tally = _Tally()
        cursor = ""
        while True:
            page = await greeting.claim(cursor)
            await self._greet(greeting, page, tally)
            if page.cursor is None or page.scanned < self._batch:
                break
            cursor = page.cursor
        if tally.created or tally.retried or tally.failed:
            log.info("%s: %d message(s) created (%d retried claim(s)), %d failed", label,
                     tally.created, tally.retried, tally.failed)
        return tally.created

    async def _greet(self, greeting: _Greeting, page: ClaimedPage, tally: _Tally) -> None:
        recipients = (*page.new, *page.retry)
        if not recipients:
            return
        tally.retried += len(page.retry)
        results = await asyncio.gather(*(self._submit(greeting, r) for r in recipients),
                                       return_exceptions=True)
        sent: list[tuple[str, UUID]] = []
        failed: list[tuple[str, str]] = []
        crash: BaseException | None = None
        for recipient, result in zip(recipients, results, strict=True):
            if isinstance(result, IntakeError):
                log.warning("%s %s for %s cannot be made: %s", greeting.kind, greeting.period,
                            mask_msisdn(recipient.msisdn), result)
                failed.append((recipient.msisdn, str(result)))
            elif isinstance(result, BaseException):
                crash = crash or result
            else:
                record, created = result
                sent.append((recipient.msisdn, record.id))
                tally.created += int(created)
        tally.failed += len(failed)
        # what was made is recorded even if a submit failed for a passing reason (Postgres
        # down): those claims stay pending and a later run retries them
        await self._store.record_sent(greeting.kind, greeting.period, sent)
        await self._store.record_failed(greeting.kind, greeting.period, failed)
        if crash is not None:
            raise crash

    async def _submit(self, greeting: _Greeting, recipient: Recipient) -> tuple[
            MessageRecord, bool]:
        data: dict[str, Any] = {
            "attributes": dict(recipient.attributes), **greeting.extra,
            "full_name": recipient.full_name, "tier": recipient.tier,
            "points": recipient.points, "segment": recipient.segment}
        request = SendRequest(
            to=recipient.msisdn, template=greeting.template, data=data,
            khong_dau=recipient.khong_dau,
            idempotency_key=f"{greeting.kind}:{greeting.period}:{recipient.msisdn}")
        async with self._slots:
            return await self._intake.submit(request, api_key_id=None)
