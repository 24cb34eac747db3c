"""Pure rules of the greetings: birthdays of a day, care days, calendar, cron schedule."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

import pytest

from gateway.greetings import (
    DEFAULT_CALENDAR,
    TIERS_VANG_UP,
    CareDay,
    GreetingRunner,
    birthday_matches,
    calendar_from_names,
    care_days_on,
    parse_send_at,
)
from jobs.greetings import birthdays, cron_jobs, holidays


def names(days: list[CareDay]) -> list[str]:
    return [d.name for d in days]


def test_birthday_on_28_february_of_a_non_leap_year_includes_29_february() -> None:
    assert birthday_matches(date(2027, 2, 28)) == [(2, 28), (2, 29)]
    assert birthday_matches(date(2100, 2, 28)) == [(2, 28), (2, 29)]  # 2100 is not leap


def test_birthday_in_a_leap_year() -> None:
    assert birthday_matches(date(2028, 2, 28)) == [(2, 28)]
    assert birthday_matches(date(2028, 2, 29)) == [(2, 29)]
    assert birthday_matches(date(2000, 2, 28)) == [(2, 28)]  # 2000 is leap


@pytest.mark.parametrize("day", [date(2026, 1, 1), date(2027, 3, 1), date(2026, 12, 31),
                                 date(2026, 2, 27), date(2028, 3, 1)])
def test_birthday_other_days(day: date) -> None:
    assert birthday_matches(day) == [(day.month, day.day)]


@pytest.mark.parametrize(("day", "expected"), [
    (date(2024, 2, 10), ["tet"]),
    (date(2025, 1, 29), ["tet"]),
    (date(2026, 2, 17), ["tet"]),
    (date(2027, 2, 6), ["tet"]),
    (date(2024, 9, 17), ["trung_thu"]),
    (date(2025, 10, 6), ["trung_thu"]),
    (date(2026, 9, 25), ["trung_thu"]),
    (date(2026, 3, 8), ["8_3"]),
    (date(2026, 10, 20), ["20_10"]),
    (date(2026, 11, 20), ["20_11"]),
    (date(2026, 12, 22), ["22_12"]),
    (date(2026, 2, 16), []),
    (date(2026, 2, 18), []),
    (date(2025, 1, 1), []),  # New Year's Day is not in the care calendar
    (date(2026, 8, 15), []),  # a solar 15/8 is not Trung thu
])
def test_care_days_on(day: date, expected: list[str]) -> None:
    assert names(care_days_on(day)) == expected


def test_every_care_day_once_a_year() -> None:
    seen: dict[tuple[int, str], int] = {}
    day = date(2024, 1, 1)
    while day < date(2031, 1, 1):
        for care in care_days_on(day):
            seen[(day.year, care.name)] = seen.get((day.year, care.name), 0) + 1
        day += timedelta(days=1)
    assert len(seen) == 7 * len(DEFAULT_CALENDAR) and set(seen.values()) == {1}


def test_lunar_rule_skips_the_leap_month() -> None:
    full_moon_6 = CareDay("ram_6", "holiday_tet", "lunar:06-15")
    assert care_days_on(date(2025, 7, 9), [full_moon_6]) == [full_moon_6]
    assert care_days_on(date(2025, 8, 8), [full_moon_6]) == []  # 15 of leap 6th month


def test_default_calendar() -> None:
    by_name = {d.name: d for d in DEFAULT_CALENDAR}
    assert set(by_name) == {"tet", "trung_thu", "8_3", "20_10", "20_11", "22_12"}
    assert by_name["tet"].date_rule == "lunar:01-01" and by_name["tet"].lunar
    assert by_name["trung_thu"].month_day == (8, 15)
    assert by_name["8_3"].date_rule == "solar:03-08" and not by_name["8_3"].lunar
    assert {d.template for d in DEFAULT_CALENDAR} == {f"holiday_{d.name}" for d in
                                                      DEFAULT_CALENDAR}
    assert all(d.tiers == () and d.segment == "" for d in DEFAULT_CALENDAR)
    assert by_name["20_10"].kind == "holiday:20_10"
    assert TIERS_VANG_UP == ("Vàng", "Kim cương")


@pytest.mark.parametrize(("name", "rule"), [
    ("x", "solar:3-8"), ("x", "gregorian:03-08"), ("x", "solar:13-01"), ("x", "solar:02-30"),
    ("x", "lunar:01-31"), ("x", "solar:04-31"), ("x", "lunar:00-01"), ("Bad Name", "solar:03-08"),
])
def test_care_day_rejects_bad_rules(name: str, rule: str) -> None:
    with pytest.raises(ValueError):
        CareDay(name, "holiday_8_3", rule)


def test_care_day_accepts_29_february_and_lunar_30() -> None:
    assert CareDay("x", "t", "solar:02-29").month_day == (2, 29)
    assert CareDay("x", "t", "lunar:12-30").month_day == (12, 30)


def test_calendar_from_names() -> None:
    vip = CareDay("20_10", "holiday_20_10", "solar:10-20", tiers=TIERS_VANG_UP)
    cal = calendar_from_names(["tet", "20_10"], extra=[vip])
    assert [d.name for d in cal] == ["tet", "20_10"] and cal[1].tiers == TIERS_VANG_UP
    with pytest.raises(ValueError, match="unknown care day"):
        calendar_from_names(["tet", "quoc_khanh"])
    # configuration: enable a subset, restrict some to "tier ≥ Vàng"
    cal = calendar_from_names(["tet", "8_3", "20_11"], tiered=["20_11"])
    assert [(d.name, d.tiers) for d in cal] == [("tet", ()), ("8_3", ()),
                                               ("20_11", TIERS_VANG_UP)]
    assert calendar_from_names(["tet"], tiered=["tet"], tiers=("Kim cương",))[0].tiers == (
        "Kim cương",)
    with pytest.raises(ValueError, match="not enabled"):
        calendar_from_names(["tet"], tiered=["20_11"])
    assert calendar_from_names([]) == ()


def test_parse_send_at() -> None:
    assert parse_send_at("08:00") == time(8, 0)
    assert parse_send_at(" 7:30 ") == time(7, 30)
    for bad in ("8", "24:00", "08:60", "8h"):
        with pytest.raises(ValueError):
            parse_send_at(bad)


def test_cron_jobs_every_5_minutes_unique_and_at_startup() -> None:
    jobs = cron_jobs()
    assert [j.name for j in jobs] == ["greetings:birthdays", "greetings:holidays"]
    assert [j.coroutine for j in jobs] == [birthdays, holidays]
    for job in jobs:
        assert job.minute == set(range(0, 60, 5))
        assert job.unique and job.run_at_startup and job.hour is None
        assert job.timeout_s is not None and job.timeout_s >= 600


async def test_jobs_before_send_time_touch_nothing() -> None:
    # 00:59 UTC is 07:59 in Hà Nội: the runner returns before using its pool or intake
    runner = GreetingRunner(cast(Any, None), cast(Any, None),
                            clock=lambda: datetime(2026, 2, 17, 0, 59, tzinfo=UTC))
    assert runner.local_now().hour == 7
    assert await birthdays({"greetings": runner}) == 0
    assert await holidays({"greetings": runner}) == 0


def test_naive_clock_is_utc() -> None:
    runner = GreetingRunner(cast(Any, None), cast(Any, None),
                            clock=lambda: datetime(2026, 3, 1, 17, 0))
    assert runner.local_now().date() == date(2026, 3, 2)
    assert runner.local_now().hour == 0
