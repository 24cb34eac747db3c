"""Send-time rules for advertising SMS (Decree 91/2020, Circular 22/2021), as pure functions.

* :class:`AdWindow`: advertising goes out only between ``window_start`` and ``window_end``
  local time (07:00–22:00 Asia/Ho_Chi_Minh by law); outside, a message waits for the next
  window (:meth:`AdWindow.next_open`), it is never dropped.
* :func:`cap_deferrals`: at most N advertising SMS per number per rolling 24 h per
  advertiser; the excess waits until the oldest counted one is 24 h old.
* :func:`send_eta`: when a number of segments at some TPS will have gone out, skipping the
  hours outside the window for advertising.

The store applies them (gateway/store/messages.py) with times from an injected clock, so tests
can put the gateway at 22:30 or replay a day.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.config import AdvertisingConfig

Clock = Callable[[], datetime]

DAY = timedelta(hours=24)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _hhmm(value: str) -> timedelta:
    hours, minutes = value.split(":")
    return timedelta(hours=int(hours), minutes=int(minutes))


@dataclass(frozen=True, slots=True)
class AdWindow:
    """The daily advertising window in its time zone."""

    tz: ZoneInfo
    start: timedelta  # from local midnight
    end: timedelta

    @classmethod
    def from_config(cls, cfg: AdvertisingConfig) -> AdWindow:
        return cls(ZoneInfo(cfg.timezone), _hhmm(cfg.window_start), _hhmm(cfg.window_end))

    def describe(self) -> str:
        def fmt(d: timedelta) -> str:
            minutes = int(d.total_seconds()) // 60
            return f"{minutes // 60:02d}:{minutes % 60:02d}"
        return f"{fmt(self.start)}–{fmt(self.end)} {self.tz.key}"

    def _midnight(self, when: datetime) -> datetime:
        local = when.astimezone(self.tz)
        return datetime.combine(local.date(), time(0), tzinfo=self.tz)

    def is_open(self, when: datetime) -> bool:
        local = when.astimezone(self.tz)
        since = local - datetime.combine(local.date(), time(0), tzinfo=self.tz)
        return self.start <= since < self.end

    def next_open(self, when: datetime) -> datetime:
        """``when`` itself if inside the window, else the start of the next window (UTC)."""
        if self.is_open(when):
            return when
        midnight = self._midnight(when)
        today = midnight + self.start
        if when.astimezone(self.tz) < today:
            return today.astimezone(UTC)
        return (midnight + timedelta(days=1) + self.start).astimezone(UTC)

    def closes_at(self, when: datetime) -> datetime:
        """End of the window ``when`` is in (``when`` must be inside one)."""
        return (self._midnight(when) + self.end).astimezone(UTC)


def cap_deferrals(limit: int, history: Sequence[datetime], batch: int, now: datetime
                  ) -> tuple[int, datetime | None]:
    """How many of ``batch`` new advertising SMS to one number may go ``now``, and from when
    the rest may, given the times ``history`` of those counted in the last 24 h."""
    recent = sorted(t for t in history if t > now - DAY)
    allowed = max(0, min(batch, limit - len(recent)))
    if allowed == batch:
        return allowed, None
    sent = recent + [now] * allowed
    # the rest may go when the count in the window drops below the limit
    return allowed, sent[len(sent) - limit] + DAY


def send_eta(segments: int, tps: float, start: datetime, window: AdWindow | None
             ) -> tuple[float, datetime]:
    """(seconds of sending, when the last segment goes) for ``segments`` at ``tps`` from
    ``start``; with a window, only its hours count."""
    seconds = segments / tps if tps > 0 else 0.0
    if window is None:
        return seconds, start + timedelta(seconds=seconds)
    at = window.next_open(start)
    left = seconds
    for _ in range(3660):  # ten years of windows: beyond that the estimate is meaningless
        room = (window.closes_at(at) - at).total_seconds()
        if left <= room:
            return seconds, at + timedelta(seconds=left)
        left -= room
        at = window.next_open(window.closes_at(at))
    return seconds, at


def daytime_clock(window: AdWindow, *, hour: int = 10) -> Clock | None:
    """None inside ``window``; outside, a clock running from ``hour``:00 local today (the
    demo and tests that must send advertising whatever the hour). Never for production."""
    now = utc_now()
    if window.is_open(now):
        return None
    local = now.astimezone(window.tz)
    offset = local.replace(hour=hour, minute=0, second=0, microsecond=0) - local
    return lambda: utc_now() + offset
