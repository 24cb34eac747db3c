"""Birthday and holiday greetings against a real Postgres (injected clock, no real waiting).

Most tests use a real :class:`Intake` on a fresh database with no queue (messages are made and
stay ``queued``); the last one runs the whole gateway to the SMSC simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from arq import Worker

from gateway import PROJECT_ROOT
from gateway.config import RedisConfig, SendingConfig
from gateway.domain import Encoding
from gateway.greetings import TIERS_VANG_UP, CareDay, GreetingRunner
from gateway.intake import Intake, SendRequest
from gateway.queue import connect, deserialize, serialize
from gateway.store.messages import MessageStore
from gateway.templating import TemplateRenderer, template_defaults
from jobs.greetings import birthdays, cron_jobs, holidays
from tests.integration.conftest import MakeStack

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


class Clock:
    """A settable clock in Hà Nội local time."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=HCM)

    def set(self, y: int, m: int, d: int, hh: int = 8, mm: int = 0) -> None:
        self.now = datetime(y, m, d, hh, mm, tzinfo=HCM)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    pool: asyncpg.Pool
    intake: Intake
    clock: Clock

    def runner(self, **kwargs: Any) -> GreetingRunner:
        return GreetingRunner(self.pool, self.intake, clock=self.clock, **kwargs)


def make_intake(pool: asyncpg.Pool) -> Intake:
    sending = SendingConfig()
    renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms",
                                defaults=template_defaults(sending))
    return Intake(store=MessageStore(pool), queue=None, renderer=renderer, sending=sending)


@pytest.fixture
async def env(fresh_pg_dsn: str) -> AsyncIterator[Env]:
    pool = await asyncpg.create_pool(fresh_pg_dsn, min_size=1, max_size=8)
    assert pool is not None
    try:
        yield Env(pool, make_intake(pool), Clock())
    finally:
        await pool.close()


_counter = iter(range(10_000_000))


def msisdn() -> str:
    return f"84901{next(_counter):06d}"


async def add_subscriber(pool: asyncpg.Pool, *, born: date | None = None, name: str = "",
                         tier: str = "", points: int = 0, segment: str = "",
                         status: str = "active", khong_dau: bool = False,
                         number: str | None = None) -> str:
    number = number or msisdn()
    await pool.execute(
        "INSERT INTO subscribers (msisdn, full_name, date_of_birth, tier, points, segment, "
        "status, khong_dau) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        number, name or f"Khách {number[-4:]}", born, tier, points, segment, status, khong_dau)
    return number


async def messages(pool: asyncpg.Pool, template: str | None = None) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT * FROM messages WHERE $1::text IS NULL OR template = $1 ORDER BY msisdn",
        template))


async def claim_left_by_a_crash(pool: asyncpg.Pool, kind: str, period: str, number: str,
                                *, age_s: float = 3600) -> None:
    await pool.execute(
        "INSERT INTO greetings_sent (kind, period, msisdn, created_at) "
        "VALUES ($1, $2, $3, now() - make_interval(secs => $4::double precision))",
        kind, period, number, age_s)


# --------------------------------------------------------------------------- birthdays


async def test_birthdays_wait_for_send_time_then_greet_today(env: Env) -> None:
    mai = await add_subscriber(env.pool, born=date(1990, 3, 1), name="Nguyễn Thị Mai",
                               tier="Vàng", points=12500)
    bao = await add_subscriber(env.pool, born=date(1985, 3, 1), tier="Kim cương", points=9)
    await add_subscriber(env.pool, born=date(1990, 3, 2))  # tomorrow
    await add_subscriber(env.pool, born=None)
    await add_subscriber(env.pool, born=date(1990, 3, 1), status="suspended")
    runner = env.runner()

    env.clock.set(2026, 3, 1, 7, 59)
    assert await runner.run_birthdays() == 0
    assert await messages(env.pool) == []

    env.clock.set(2026, 3, 1, 8, 0)
    assert await runner.run_birthdays() == 2
    rows = await messages(env.pool)
    assert [r["msisdn"] for r in rows] == sorted([mai, bao])
    by_number = {r["msisdn"]: r for r in rows}
    assert "Nguyễn Thị Mai" in by_number[mai]["body"]
    assert "hội viên Vàng: 300 điểm" in by_number[mai]["body"]
    assert "12.500" in by_number[mai]["body"]
    assert "Kim cương: 500 điểm" in by_number[bao]["body"]
    assert by_number[mai]["idempotency_key"] == f"birthday:2026:{mai}"
    assert {r["template"] for r in rows} == {"birthday"}
    assert {r["status"] for r in rows} == {"queued"}
    ledger = await runner.store.entries("birthday", "2026")
    assert {(e.msisdn, e.message_id) for e in ledger} == {(r["msisdn"], r["id"]) for r in rows}

    # a rerun (the next cron tick, or a whole second worker) makes nothing new
    env.clock.set(2026, 3, 1, 8, 5)
    assert await runner.run_birthdays() == 0
    assert await env.runner().run_birthdays() == 0
    assert len(await messages(env.pool)) == 2


async def test_utc_clock_is_read_in_local_time(env: Env) -> None:
    await add_subscriber(env.pool, born=date(1990, 3, 1))
    instant = [datetime(2026, 3, 1, 0, 59, tzinfo=ZoneInfo("UTC"))]  # 07:59 in Hà Nội
    runner = GreetingRunner(env.pool, env.intake, clock=lambda: instant[0])
    assert await runner.run_birthdays() == 0
    instant[0] = datetime(2026, 3, 1, 1, 0, tzinfo=ZoneInfo("UTC"))  # 08:00
    assert await runner.run_birthdays() == 1


async def test_29_february_birthdays_on_28_february_of_non_leap_years(env: Env) -> None:
    leapling = await add_subscriber(env.pool, born=date(2000, 2, 29))
    feb28 = await add_subscriber(env.pool, born=date(1990, 2, 28))
    await add_subscriber(env.pool, born=date(1990, 3, 1))
    runner = env.runner()

    env.clock.set(2027, 2, 28, 8, 0)
    assert await runner.run_birthdays() == 2
    assert {r["msisdn"] for r in await messages(env.pool)} == {leapling, feb28}

    env.clock.set(2027, 3, 1, 8, 0)  # the day after: no second wish for the 29 February one
    assert await runner.run_birthdays() == 1

    env.clock.set(2028, 2, 28, 8, 0)  # leap year: only 28 February...
    assert await runner.run_birthdays() == 1
    env.clock.set(2028, 2, 29, 8, 0)  # ...and the leapling on its own day
    assert await runner.run_birthdays() == 1
    rows = await messages(env.pool)
    keys = {r["idempotency_key"] for r in rows}
    assert f"birthday:2027:{leapling}" in keys and f"birthday:2028:{leapling}" in keys
    assert len(rows) == 5


async def test_catch_up_late_in_the_day_but_never_the_day_after(env: Env) -> None:
    early = await add_subscriber(env.pool, born=date(1990, 3, 1))
    runner = env.runner()
    env.clock.set(2026, 3, 1, 15, 0)  # the gateway was down at 08:00
    assert await runner.run_birthdays() == 1

    late = await add_subscriber(env.pool, born=date(1991, 3, 1))  # registered in the evening
    env.clock.set(2026, 3, 1, 23, 59)
    assert await runner.run_birthdays() == 1

    missed = await add_subscriber(env.pool, born=date(1992, 3, 1))  # registered at midnight
    for hh, mm in ((0, 0), (0, 5), (8, 0), (23, 59)):
        env.clock.set(2026, 3, 2, hh, mm)
        assert await runner.run_birthdays() == 0
    assert {r["msisdn"] for r in await messages(env.pool)} == {early, late}
    assert missed not in {e.msisdn for e in await runner.store.entries("birthday", "2026")}


async def test_two_runners_at_once_greet_each_subscriber_exactly_once(
        env: Env, fresh_pg_dsn: str) -> None:
    numbers = {await add_subscriber(env.pool, born=date(1980 + i % 30, 3, 1))
               for i in range(120)}
    other = await asyncpg.create_pool(fresh_pg_dsn, min_size=1, max_size=8)
    assert other is not None
    try:
        env.clock.set(2026, 3, 1, 8, 0)
        one = env.runner(batch=7)
        two = GreetingRunner(other, make_intake(other), clock=env.clock, batch=11)
        counts = await asyncio.gather(one.run_birthdays(), two.run_birthdays(),
                                      one.run_birthdays(), two.run_birthdays())
    finally:
        await other.close()
    assert sum(counts) == 120, counts
    rows = await messages(env.pool)
    assert [r["msisdn"] for r in rows] == sorted(numbers)
    ledger = await env.runner().store.entries("birthday", "2026")
    assert len(ledger) == 120 and all(e.message_id is not None for e in ledger)


async def test_many_pages(env: Env) -> None:
    for i in range(23):
        await add_subscriber(env.pool, born=date(1990, 3, 1), khong_dau=i % 2 == 0)
    env.clock.set(2026, 3, 1, 9, 0)
    assert await env.runner(batch=5).run_birthdays() == 23
    assert await env.runner(batch=5).run_birthdays() == 0


async def test_crash_between_claim_and_message_is_retried_once(env: Env) -> None:
    lost = await add_subscriber(env.pool, born=date(1990, 3, 1))
    await claim_left_by_a_crash(env.pool, "birthday", "2026", lost)
    env.clock.set(2026, 3, 1, 8, 5)
    runner = env.runner()
    assert await runner.run_birthdays() == 1
    [row] = await messages(env.pool)
    assert row["msisdn"] == lost and row["idempotency_key"] == f"birthday:2026:{lost}"
    [entry] = await runner.store.entries("birthday", "2026")
    assert entry.message_id == row["id"]
    assert await runner.run_birthdays() == 0
    assert len(await messages(env.pool)) == 1


async def test_crash_after_the_message_was_made_does_not_double_it(env: Env) -> None:
    # the message was created but the process died before the ledger got its id
    number = await add_subscriber(env.pool, born=date(1990, 3, 1), name="Trần Văn An")
    await claim_left_by_a_crash(env.pool, "birthday", "2026", number)
    made, created = await env.intake.submit(SendRequest(
        to=number, template="birthday", data={"full_name": "Trần Văn An", "tier": "",
                                              "points": 0},
        idempotency_key=f"birthday:2026:{number}"), api_key_id=None)
    assert created
    env.clock.set(2026, 3, 1, 8, 10)
    runner = env.runner()
    assert await runner.run_birthdays() == 0  # nothing new was created...
    [entry] = await runner.store.entries("birthday", "2026")
    assert entry.message_id == made.id  # ...but the ledger now points at the message
    assert len(await messages(env.pool)) == 1


async def test_a_fresh_claim_is_left_to_the_runner_that_made_it(env: Env) -> None:
    number = await add_subscriber(env.pool, born=date(1990, 3, 1))
    await claim_left_by_a_crash(env.pool, "birthday", "2026", number, age_s=0)
    env.clock.set(2026, 3, 1, 8, 0)
    assert await env.runner().run_birthdays() == 0  # another worker may be making it now
    assert await messages(env.pool) == []
    assert await env.runner(retry_after_s=0).run_birthdays() == 1


async def test_a_message_that_cannot_be_made_is_recorded_and_not_retried(env: Env) -> None:
    bad = await add_subscriber(env.pool, born=date(1990, 3, 1), number="123456")
    good = await add_subscriber(env.pool, born=date(1990, 3, 1))
    env.clock.set(2026, 3, 1, 8, 0)
    runner = env.runner(retry_after_s=0)
    assert await runner.run_birthdays() == 1
    assert [r["msisdn"] for r in await messages(env.pool)] == [good]
    entries = {e.msisdn: e for e in await runner.store.entries("birthday", "2026")}
    assert entries[bad].message_id is None and entries[bad].error
    assert "usable mobile number" in (entries[bad].error or "")
    assert await runner.run_birthdays() == 0


async def test_khong_dau_subscribers_get_the_gsm7_form(env: Env) -> None:
    plain = await add_subscriber(env.pool, born=date(1990, 3, 1), name="Đỗ Thị Hằng",
                                 tier="Bạc", khong_dau=True)
    accented = await add_subscriber(env.pool, born=date(1990, 3, 1), name="Đỗ Thị Hằng",
                                    tier="Bạc")
    env.clock.set(2026, 3, 1, 8, 0)
    assert await env.runner().run_birthdays() == 2
    by_number = {r["msisdn"]: r for r in await messages(env.pool)}
    assert by_number[plain]["encoding"] == Encoding.GSM7.value
    assert by_number[plain]["khong_dau"] is True
    assert "Do Thi Hang" in by_number[plain]["body"] and "Bac" in by_number[plain]["body"]
    assert by_number[plain]["body"].isascii()
    assert by_number[accented]["encoding"] == Encoding.UCS2.value
    assert "Đỗ Thị Hằng" in by_number[accented]["body"]


# --------------------------------------------------------------------------- holidays


async def test_tet_greets_every_active_subscriber_once(env: Env) -> None:
    active = {await add_subscriber(env.pool, tier=t) for t in ("", "Bạc", "Vàng", "Titan")}
    await add_subscriber(env.pool, status="suspended")
    runner = env.runner()

    env.clock.set(2026, 2, 17, 7, 59)
    assert await runner.run_holidays() == 0
    env.clock.set(2026, 2, 16, 12, 0)  # the eve of Tết: no greeting yet
    assert await runner.run_holidays() == 0

    env.clock.set(2026, 2, 17, 8, 0)
    assert await runner.run_holidays() == 4
    rows = await messages(env.pool)
    assert {r["msisdn"] for r in rows} == active
    assert {r["template"] for r in rows} == {"holiday_tet"}
    assert all(r["body"].startswith("Mừng Xuân Bính Ngọ, kính chúc Quý khách") for r in rows)
    some = next(iter(active))
    assert {r["idempotency_key"] for r in rows} >= {f"holiday:tet:2026-02-17:{some}"}
    env.clock.set(2026, 2, 17, 21, 0)
    assert await runner.run_holidays() == 0
    assert {e.msisdn for e in await runner.store.entries("holiday:tet", "2026-02-17")} == active
    assert len(await messages(env.pool)) == 4


async def test_trung_thu_and_solar_days_of_the_default_calendar(env: Env) -> None:
    await add_subscriber(env.pool)
    runner = env.runner()
    for day, template in ((date(2025, 10, 6), "holiday_trung_thu"),
                          (date(2026, 3, 8), "holiday_8_3"),
                          (date(2026, 10, 20), "holiday_20_10"),
                          (date(2026, 11, 20), "holiday_20_11"),
                          (date(2026, 12, 22), "holiday_22_12")):
        env.clock.set(day.year, day.month, day.day, 10, 0)
        assert await runner.run_holidays() == 1, template
        assert len(await messages(env.pool, template)) == 1
    env.clock.set(2026, 12, 23, 10, 0)
    assert await runner.run_holidays() == 0


async def test_tier_and_segment_filtered_care_days(env: Env) -> None:
    vang = await add_subscriber(env.pool, tier="Vàng")
    kim = await add_subscriber(env.pool, tier="Kim cương", segment="postpaid")
    sloppy = await add_subscriber(env.pool, tier=" vàng ")
    await add_subscriber(env.pool, tier="Titan", segment="postpaid")
    await add_subscriber(env.pool, tier="Bạc")
    await add_subscriber(env.pool, tier="")
    await add_subscriber(env.pool, tier="Kim cương", status="suspended")
    calendar = [
        CareDay("vip_20_10", "holiday_20_10", "solar:10-20", tiers=TIERS_VANG_UP),
        CareDay("postpaid_20_10", "holiday_20_11", "solar:10-20", segment="postpaid"),
        CareDay("not_today", "holiday_8_3", "solar:03-08"),
    ]
    runner = env.runner(calendar=calendar)
    env.clock.set(2026, 10, 20, 8, 30)
    assert await runner.run_holidays() == 3 + 2
    assert {r["msisdn"] for r in await messages(env.pool, "holiday_20_10")} == {vang, kim,
                                                                                 sloppy}
    assert len(await messages(env.pool, "holiday_20_11")) == 2
    assert await messages(env.pool, "holiday_8_3") == []
    assert await runner.run_holidays() == 0
    # a calendar given to the call replaces the runner's
    assert await runner.run_holidays([CareDay("all", "holiday_20_10", "solar:10-20")]) == 6


async def test_holiday_khong_dau(env: Env) -> None:
    plain = await add_subscriber(env.pool, name="Phạm Quốc Bảo", khong_dau=True)
    env.clock.set(2026, 2, 17, 8, 0)
    assert await env.runner().run_holidays() == 1
    [row] = await messages(env.pool)
    assert row["msisdn"] == plain and row["encoding"] == Encoding.GSM7.value
    assert row["body"].startswith("Mung Xuan Binh Ngo, kinh chuc Quy khach Pham Quoc Bao")


async def test_arq_job_functions(env: Env) -> None:
    await add_subscriber(env.pool, born=date(1990, 2, 17))
    env.clock.set(2026, 2, 17, 8, 0)
    ctx: dict[str, Any] = {"greetings": env.runner()}
    assert await birthdays(ctx) == 1
    assert await holidays(ctx) == 1
    assert await birthdays(ctx) == 0 and await holidays(ctx) == 0


async def test_cron_jobs_run_in_an_arq_worker(env: Env, redis_dsn: str) -> None:
    # the way the gateway's worker runs them: msgpack jobs, the runner in ctx, at start-up
    number = await add_subscriber(env.pool, born=date(1990, 2, 17))
    env.clock.set(2026, 2, 17, 8, 0)
    cfg = RedisConfig(dsn=redis_dsn, queue_name=f"smsgw:test:{uuid.uuid4().hex}")
    redis = await connect(cfg)
    worker = Worker(functions=[], cron_jobs=cron_jobs(), queue_name=cfg.queue_name,
                    redis_pool=redis, handle_signals=False, poll_delay=0.02,
                    ctx={"greetings": env.runner()}, job_serializer=serialize,
                    job_deserializer=deserialize)
    task = asyncio.create_task(worker.async_run())
    try:
        for _ in range(500):
            if len(await messages(env.pool)) == 2 and worker.jobs_complete >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose(close_connection_pool=True)
    assert worker.jobs_failed == 0
    rows = await messages(env.pool)
    assert sorted(r["template"] for r in rows) == ["birthday", "holiday_tet"]
    assert {r["msisdn"] for r in rows} == {number}


# --------------------------------------------------------------------------- end to end


async def test_birthdays_reach_the_smsc(make_stack: MakeStack) -> None:
    st = await make_stack()
    assert st.gw.pool is not None and st.gw.intake is not None
    base = 84902000000 + uuid.uuid4().int % 900_000
    plain = await add_subscriber(st.gw.pool, born=date(1990, 3, 1), name="Lê Văn Hùng",
                                 tier="Titan", points=2000, khong_dau=True, number=str(base))
    accented = await add_subscriber(st.gw.pool, born=date(2000, 2, 29), name="Lê Thị Hoa",
                                    number=str(base + 1))
    now: Callable[[], datetime] = lambda: datetime(2027, 2, 28, 8, 0, tzinfo=HCM)  # noqa: E731
    runner = GreetingRunner(st.gw.pool, st.gw.intake, clock=now, send_at=time(8, 0))
    assert await runner.run_birthdays() == 1  # 28 Feb 2027: only the 29 February birthday
    now = lambda: datetime(2027, 3, 1, 8, 0, tzinfo=HCM)  # noqa: E731
    runner = GreetingRunner(st.gw.pool, st.gw.intake, clock=now)
    assert await runner.run_birthdays() == 1
    ids = [str(e.message_id) for year in ("2027",)
           for e in await runner.store.entries("birthday", year)]
    assert len(ids) == 2
    statuses = await st.wait_terminal(ids)
    assert set(statuses.values()) == {"delivered"}
    [hoa] = st.sim.messages(accented)
    assert hoa.startswith("Chúc mừng sinh nhật Quý khách Lê Thị Hoa!")
    [hung] = st.sim.messages(plain)
    assert hung.startswith("Chuc mung sinh nhat Quy khach Le Van Hung! Qua tang hoi vien Titan")
    assert "2.000" in hung
