"""CampaignGate: a runner refresh that read Postgres before this process's own pause or
resume must not undo it."""

from __future__ import annotations

import uuid

from gateway.campaigns import CampaignGate


def test_a_refresh_read_before_a_pause_does_not_reopen_the_gate() -> None:
    gate, cid = CampaignGate(), uuid.uuid4()
    gate.replace({cid})
    mark = gate.mark()  # the runner starts reading: the campaign is running
    gate.discard(cid)  # meanwhile this process pauses it
    gate.replace({cid}, since=mark)  # the (older) read arrives
    assert not gate.is_running(cid)
    keep = gate.keep(cid)
    assert not keep()
    gate.replace(set(), since=gate.mark())  # the next read agrees with the pause
    assert not gate.is_running(cid)


def test_a_refresh_read_before_a_resume_does_not_close_the_gate() -> None:
    gate, cid = CampaignGate(), uuid.uuid4()
    mark = gate.mark()
    gate.add(cid)  # this process resumes it while the runner reads "paused"
    gate.replace(set(), since=mark)
    assert gate.is_running(cid)
    assert gate.keep(cid)()


def test_a_refresh_read_after_the_change_wins() -> None:
    gate, cid, other = CampaignGate(), uuid.uuid4(), uuid.uuid4()
    gate.add(cid)
    mark = gate.mark()  # read begins after our change was committed
    gate.replace({other}, since=mark)  # ... and says another process paused cid since
    assert not gate.is_running(cid) and gate.is_running(other)
    gate.discard(other)
    gate.replace({other})  # an authoritative read (no mark) wins over everything
    assert gate.is_running(other)
