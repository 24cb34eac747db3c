"""The Vietnamese lunar calendar (UTC+7) through vnlunar."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from gateway.lunar import LunarDay, can_chi_year, lunar_to_solar, solar_to_lunar, tet, trung_thu


@pytest.mark.parametrize(("year", "expected"), [
    (2024, date(2024, 2, 10)),
    (2025, date(2025, 1, 29)),
    (2026, date(2026, 2, 17)),
    (2027, date(2027, 2, 6)),
])
def test_tet(year: int, expected: date) -> None:
    assert tet(year) == expected
    assert lunar_to_solar(1, 1, year) == expected


@pytest.mark.parametrize(("year", "expected"), [
    (2024, date(2024, 9, 17)),
    (2025, date(2025, 10, 6)),
    (2026, date(2026, 9, 25)),
    (2027, date(2027, 9, 15)),
])
def test_trung_thu(year: int, expected: date) -> None:
    assert trung_thu(year) == expected


@pytest.mark.parametrize(("year", "expected"), [
    # years where the UTC+7 calendar and the Chinese (UTC+8) one disagree on the new year
    (1985, date(1985, 1, 21)),  # Chinese New Year: 20 February
    (2007, date(2007, 2, 17)),  # Chinese: 18 February
    (2030, date(2030, 2, 2)),  # Chinese: 3 February
])
def test_tet_is_computed_for_utc_plus_7(year: int, expected: date) -> None:
    assert tet(year) == expected


def test_leap_month() -> None:
    # 2025 has a leap 6th month (tháng 6 nhuận) right after the regular one
    assert lunar_to_solar(15, 6, 2025) == date(2025, 7, 9)
    assert lunar_to_solar(15, 6, 2025, leap=True) == date(2025, 8, 8)
    assert solar_to_lunar(date(2025, 8, 8)) == LunarDay(15, 6, 2025, leap=True)
    with pytest.raises(ValueError, match="leap month 6 of 2026"):
        lunar_to_solar(1, 6, 2026, leap=True)


def test_days_that_do_not_exist() -> None:
    with pytest.raises(ValueError, match="lunar day 30 of month 12 of 2024"):
        lunar_to_solar(30, 12, 2024)  # the last month of Giáp Thìn has 29 days
    assert lunar_to_solar(29, 12, 2024) == date(2025, 1, 28)  # the eve of Tết 2025
    for bad in ((0, 1), (31, 1), (1, 13), (1, 0)):
        with pytest.raises(ValueError):
            lunar_to_solar(*bad, 2026)


def test_solar_to_lunar_round_trip() -> None:
    assert solar_to_lunar(date(2026, 2, 17)) == LunarDay(1, 1, 2026)
    assert solar_to_lunar(date(2026, 2, 16)) == LunarDay(29, 12, 2025)
    day = date(2024, 1, 1)
    while day < date(2028, 1, 1):
        lunar = solar_to_lunar(day)
        assert lunar_to_solar(lunar.day, lunar.month, lunar.year, leap=lunar.leap) == day
        day += timedelta(days=1)


def test_can_chi_year() -> None:
    assert can_chi_year(2024) == "Giáp Thìn"
    assert can_chi_year(2025) == "Ất Tỵ"
    assert can_chi_year(2026) == "Bính Ngọ"
    assert can_chi_year(2027) == "Đinh Mùi"
