"""The Vietnamese lunar calendar (âm lịch), computed for UTC+7, via ``vnlunar``.

Vietnam's calendar has been computed for UTC+7 since 1968; the Chinese calendar uses UTC+8,
and the two disagree on some new moons (Tết 1985, 2007 and 2030 fall on other days than the
Chinese New Year). The conversions here always ask ``vnlunar`` for its astronomical algorithm
at UTC+7 rather than its historical tables, which follow the calendar as issued (UTC+8 before
1968); for any year the gateway greets in, both agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import vnlunar

__all__ = [
    "VIETNAM_UTC_OFFSET",
    "LunarDay",
    "can_chi_year",
    "lunar_to_solar",
    "solar_to_lunar",
    "tet",
    "trung_thu",
]

#: Hours east of UTC the Vietnamese lunar calendar is computed for.
VIETNAM_UTC_OFFSET = 7.0


@dataclass(frozen=True, slots=True)
class LunarDay:
    """A day of the lunar calendar; ``leap`` marks a day of a leap (nhuận) month."""

    day: int
    month: int
    year: int
    leap: bool = False


def lunar_to_solar(day: int, month: int, year: int, *, leap: bool = False) -> date:
    """The solar date of lunar ``day``/``month`` of lunar ``year`` (UTC+7).

    Raises :class:`ValueError` when that lunar day does not exist (day 30 of a 29-day month,
    a leap month the year does not have, a day or month out of range).
    """
    result = vnlunar.convert_lunar_to_solar(day, month, year, 1 if leap else 0,
                                            VIETNAM_UTC_OFFSET)
    if result is None:
        kind = "leap month " if leap else "month "
        raise ValueError(f"lunar day {day} of {kind}{month} of {year} does not exist")
    solar_day, solar_month, solar_year = result
    return date(int(solar_year), int(solar_month), int(solar_day))


def solar_to_lunar(when: date) -> LunarDay:
    """The lunar day of solar date ``when`` (UTC+7)."""
    lunar = vnlunar.get_lunar_date(when.day, when.month, when.year, VIETNAM_UTC_OFFSET)
    return LunarDay(day=int(lunar["day"]), month=int(lunar["month"]), year=int(lunar["year"]),
                    leap=bool(lunar["leap"]))


def tet(year: int) -> date:
    """Tết Nguyên đán: lunar 1/1 of lunar ``year`` (always in solar January or February)."""
    return lunar_to_solar(1, 1, year)


def trung_thu(year: int) -> date:
    """Tết Trung thu: lunar 15/8 (the regular 8th month, not a leap one) of ``year``."""
    return lunar_to_solar(15, 8, year)


def can_chi_year(lunar_year: int) -> str:
    """The sexagenary (Can Chi) name of a lunar year, e.g. 2026 → ``"Bính Ngọ"``."""
    return str(vnlunar.get_year_can_chi(lunar_year))
