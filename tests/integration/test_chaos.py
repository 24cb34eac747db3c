"""Crash test: ``smsgw serve`` is killed with SIGKILL three times while 2,000 messages go
through it, and restarted each time (the harness is ``bench/chaos.py``, which does the full
20,000-message run). Nothing accepted may be lost; only messages caught in the ambiguous
window (README) may reach the SMSC twice, and none with ``ambiguous_policy=fail``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosSettings, run_chaos

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("policy", ["resend", "fail"])
async def test_kill_9_three_times_loses_nothing(fresh_pg_dsn: str, redis_dsn: str,
                                                tmp_path: Path, policy: str) -> None:
    settings = ChaosSettings(count=2000, kills=3, policy=policy, terminal_timeout_s=40)
    report = await run_chaos(dsn=fresh_pg_dsn, redis_dsn=redis_dsn, settings=settings,
                             workdir=tmp_path)
    context = (f"seed {settings.seed}: {report.row()} statuses {dict(report.statuses)}; "
               f"gateway log {report.log_file}")
    assert report.kills == 3, context
    assert report.http_retries > 0, context  # requests were in flight at the kills
    # intake: every message accepted once, retries answered with the stored one
    assert report.accepted == report.rows == 2000, context
    assert report.unfinished == [], context
    assert report.lost == [], context
    assert report.ambiguous, context  # a kill mid-send leaves claimed, unanswered submits
    assert report.unexplained_duplicates == [], context
    if policy == "resend":
        assert set(report.statuses) == {"delivered"}, context
    else:
        assert report.duplicates == {}, context
        assert report.statuses["failed"] <= len(report.ambiguous), context
        assert report.statuses["delivered"] + report.statuses["failed"] == 2000, context
