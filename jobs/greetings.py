"""arq cron jobs for the birthday and holiday greetings (:class:`gateway.greetings.GreetingRunner`).

Both run every 5 minutes, all day, and at worker start-up: the runner sends nothing before
its local ``send_at`` time, and its ledger sends each greeting once, so the frequent runs only
make a gateway that was down at 08:00 catch up the same day. ``ctx["greetings"]`` must hold
the :class:`~gateway.greetings.GreetingRunner`.
"""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.cron import CronJob

from gateway.greetings import GreetingRunner

#: Minutes of every hour at which both jobs run.
EVERY_5_MINUTES = frozenset(range(0, 60, 5))
#: Longest a run may take before arq cancels it; claims it left unfinished are retried by a
#: later run (the worker's own job_timeout is too short for Tết to millions of subscribers).
RUN_TIMEOUT_S = 3600


def _runner(ctx: dict[str, Any]) -> GreetingRunner:
    runner = ctx["greetings"]
    assert isinstance(runner, GreetingRunner)
    return runner


async def birthdays(ctx: dict[str, Any]) -> int:
    """Today's birthday wishes not sent yet; returns how many messages were created."""
    return await _runner(ctx).run_birthdays()


async def holidays(ctx: dict[str, Any]) -> int:
    """Today's holiday greetings not sent yet; returns how many messages were created."""
    return await _runner(ctx).run_holidays()


def cron_jobs() -> list[CronJob]:
    """Both greeting jobs every 5 minutes (unique per tick across workers), and at start-up."""
    return [
        cron(job, name=f"greetings:{job.__name__}", minute=set(EVERY_5_MINUTES),
             run_at_startup=True, unique=True, timeout=RUN_TIMEOUT_S)
        for job in (birthdays, holidays)
    ]
