"""Marketing campaigns: upload → approve (a second person) → run → watch → report.

Lifecycle (``campaigns.status``)::

    draft ──approve──▶ approved ──start──▶ scheduled ──(schedule_at)──▶ running ⇄ paused
      │                   │                    │                          │
      └───────────────────┴──────cancel────────┴──────────────────────────┴──▶ cancelled
                                                        running ──(nothing left)──▶ completed

* Approval needs the ``campaigns:approve`` scope **and** a different API key from the one
  that uploaded the campaign (maker–checker).
* :class:`CampaignRunner` (one per gateway process; several processes share the work through
  ``FOR UPDATE SKIP LOCKED``) starts scheduled campaigns when due and feeds running ones to
  the bulk lane a few seconds ahead of the links' TPS. Advertising is not released outside
  the advertising window; the send-time guard (gateway/adguard.py) checks each message again.
* Pause and cancel act at once on what is queued (back to held / cancelled) and, through
  :class:`CampaignGate`, on what is already claimed: a part still waiting for an SMPP window
  slot is withdrawn. Only what is already in the window goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from gateway.campaign_ingest import (
    RowSpec,
    UploadError,
    open_upload,
)
from gateway.compliance import AdWindow, Clock, send_eta
from gateway.config import AdvertisingConfig, CampaignsConfig, SendingConfig
from gateway.domain import MessageClass, MessageStatus
from gateway.intake import IntakeError, check_sender
from gateway.masking import mask_msisdn
from gateway.store.campaigns import (
    Campaign,
    CampaignStatus,
    CampaignStore,
    EmptyUpload,
    NewCampaign,
)
from gateway.templating import TemplateError, TemplateRenderer

log = logging.getLogger("smsgw.campaigns")

S = CampaignStatus
WAITING = ("held", "queued", "submitting")
FINAL_FAILED = ("undelivered", "expired", "rejected", "failed")

#: (ids, bulk lane?) → enqueue one send job
Enqueue = Callable[[Sequence[UUID]], Awaitable[None]]


class CampaignError(Exception):
    """A request about a campaign that cannot be done; ``status`` is the HTTP status."""

    def __init__(self, status: int, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field


class CampaignGate:
    """Which campaigns are running, as this process last saw them (refreshed by the runner,
    updated at once by this process's own actions). A claimed campaign message is sent only
    while its campaign is running.

    A refresh reads Postgres, which takes time: a pause (or resume) made by this process
    while the runner's read was under way must not be undone by that read's older answer.
    So the runner takes :meth:`mark` before it reads and passes it to :meth:`replace`, which
    re-applies this process's own changes made since the mark. Other processes' changes
    reach this one at its runner's next tick (``campaigns.tick_s``)."""

    def __init__(self, loader: Callable[[], Awaitable[set[UUID]]] | None = None) -> None:
        self._running: set[UUID] = set()
        self._loader = loader  # reads the running campaigns from Postgres
        self._seq = 0
        self._changes: dict[UUID, tuple[int, bool]] = {}  # campaign → (seq, running?)

    def mark(self) -> int:
        """Take before reading the running campaigns; pass to :meth:`replace`."""
        return self._seq

    def replace(self, ids: set[UUID], since: int | None = None) -> None:
        """The running campaigns as read from Postgres after ``mark()`` returned ``since``
        (None: an authoritative read with no change of ours in flight)."""
        running = set(ids)
        for cid, (seq, on) in list(self._changes.items()):
            if since is not None and seq > since:  # newer than the read: ours wins
                if on:
                    running.add(cid)
                else:
                    running.discard(cid)
            else:
                del self._changes[cid]
        self._running = running

    def _change(self, campaign_id: UUID, on: bool) -> None:
        self._seq += 1
        self._changes[campaign_id] = (self._seq, on)

    def add(self, campaign_id: UUID) -> None:
        self._change(campaign_id, True)
        self._running.add(campaign_id)

    def discard(self, campaign_id: UUID) -> None:
        self._change(campaign_id, False)
        self._running.discard(campaign_id)

    async def confirm(self, campaign_ids: set[UUID]) -> None:
        """Before holding claimed messages of campaigns this process does not know to be
        running, ask Postgres: another process may have started or resumed them since the
        runner's last tick."""
        unknown = campaign_ids - self._running
        if unknown and self._loader is not None:
            self._running.update(unknown & await self._loader())

    def is_running(self, campaign_id: UUID) -> bool:
        return campaign_id in self._running

    def keep(self, campaign_id: UUID) -> Callable[[], bool]:
        return lambda: campaign_id in self._running


@dataclass(frozen=True, slots=True)
class UploadForm:
    name: str
    message_class: MessageClass
    sender: str
    advertiser: str
    template: str | None
    text: str | None
    schedule_at: datetime | None
    msisdn_column: str | None
    mapping: Mapping[str, str]
    encoding: str
    khong_dau: bool
    file_name: str


class CampaignService:
    def __init__(self, store: CampaignStore, renderer: TemplateRenderer, *,
                 sending: SendingConfig, advertising: AdvertisingConfig,
                 campaigns: CampaignsConfig, tps: Callable[[], float], clock: Clock,
                 gate: CampaignGate) -> None:
        self.store = store
        self._renderer = renderer
        self._sending = sending
        self._campaigns = campaigns
        self.report_masked = campaigns.report_masked
        self.window = AdWindow.from_config(advertising)
        self._tps = tps
        self._clock = clock
        self.gate = gate

    # -- upload --------------------------------------------------------------------------
    async def upload(self, path: Path, form: UploadForm, *, api_key_id: int | None
                     ) -> dict[str, Any]:
        if not form.name.strip():
            raise UploadError("give the campaign a name", field="name")
        try:
            check_sender(form.sender)
        except IntakeError as exc:
            raise UploadError(exc.reason, field="sender") from None
        if (form.template is None) == (form.text is None):
            raise UploadError("give either a template name or the text of the message",
                              field="template")
        try:  # the template is checked here; each parser compiles its own
            self._renderer.row_function(name=form.template, source=form.text)
        except TemplateError as exc:
            raise UploadError(str(exc), field="template" if form.template else "text") from None
        cid = uuid.uuid4()
        spec = RowSpec(campaign_id=cid, message_class=form.message_class, sender=form.sender,
                       advertiser=form.advertiser or form.sender, template=form.template,
                       text=form.text, templates_dir=self._renderer.templates_dir,
                       template_defaults=dict(self._renderer.defaults),
                       refusal=self._sending.refusal,
                       khong_dau=form.khong_dau, api_key_id=api_key_id,
                       region=self._sending.region, msisdn_column=form.msisdn_column,
                       mapping=form.mapping, encoding=form.encoding,
                       samples=self._campaigns.samples,
                       needs=self._renderer.row_variables(name=form.template, source=form.text)
                       or frozenset())
        parser = await open_upload(
            path, spec, workers=self._campaigns.parse_workers,
            split_bytes=int(self._campaigns.parse_split_mb * (1 << 20)))
        source = form.text if form.text is not None else f"{{% include {form.template!r} %}}"
        new = NewCampaign(id=cid, name=form.name.strip(), message_class=form.message_class.value,
                          sender=form.sender, advertiser=spec.advertiser, template=form.template,
                          source=source, file_name=form.file_name, created_by=api_key_id,
                          schedule_at=form.schedule_at)
        try:
            campaign = await self.store.ingest(new, parser.blocks(), parser.tail)
        except EmptyUpload as exc:
            tail = parser.tail()
            raise UploadError(
                "no message to send: " + (
                    "the file has no rows below its header" if tail.rows == 0 else
                    f"none of its {tail.rows} row(s) can be used"),
                details={"upload": exc.upload, "rejected_rows": [
                    {"line": r[0], "value": r[1], "kind": r[2], "reason": r[3]}
                    for r in tail.rejects[:200]]}) from None
        log.info("campaign %s %r uploaded: %s", cid, new.name, campaign.upload)
        held = {s.value: 0 for s in MessageStatus}
        held[MessageStatus.HELD.value] = campaign.upload["accepted"]
        return await self.view(campaign.id, counts=held)

    # -- lifecycle -----------------------------------------------------------------------
    async def _get(self, campaign_id: UUID) -> Campaign:
        campaign = await self.store.get(campaign_id)
        if campaign is None:
            raise CampaignError(404, f"no campaign {campaign_id}")
        return campaign

    async def _move(self, campaign: Campaign, to: str, allowed: Sequence[str],
                    api_key_id: int | None, verb: str, detail: str = "") -> Campaign:
        moved = await self.store.move(campaign.id, to, allowed_from=allowed,
                                      api_key_id=api_key_id, detail=detail)
        if moved is None:
            now = await self._get(campaign.id)
            raise CampaignError(409, f"cannot {verb} a campaign that is {now.status} (only "
                                     f"when {' or '.join(allowed)})")
        log.info("campaign %s: %s → %s", campaign.id, campaign.status, moved.status)
        return moved

    async def approve(self, campaign_id: UUID, api_key_id: int | None) -> dict[str, Any]:
        campaign = await self._get(campaign_id)
        if campaign.created_by is not None and campaign.created_by == api_key_id:
            raise CampaignError(403, "the API key that uploaded a campaign cannot approve it "
                                     "(maker–checker): a second person must approve it with "
                                     "their own key having the campaigns:approve scope")
        await self._move(campaign, S.APPROVED, (S.DRAFT,), api_key_id, "approve")
        return await self.view(campaign_id)

    async def start(self, campaign_id: UUID, api_key_id: int | None) -> dict[str, Any]:
        campaign = await self._get(campaign_id)
        now = self._clock()
        to = S.SCHEDULED if campaign.schedule_at and campaign.schedule_at > now else S.RUNNING
        if campaign.status == S.DRAFT:
            raise CampaignError(409, "the campaign must be approved before it starts "
                                     "(POST /v1/campaigns/{id}/approve with another key)")
        await self._move(campaign, to, (S.APPROVED,), api_key_id, "start")
        if to == S.RUNNING:
            self.gate.add(campaign_id)
        return await self.view(campaign_id)

    async def pause(self, campaign_id: UUID, api_key_id: int | None) -> dict[str, Any]:
        campaign = await self._get(campaign_id)
        self.gate.discard(campaign_id)  # at once; again once the move is committed (below)
        await self._move(campaign, S.PAUSED, (S.RUNNING, S.SCHEDULED), api_key_id, "pause")
        self.gate.discard(campaign_id)
        n = await self.store.hold_queued(campaign_id, "campaign paused")
        log.info("campaign %s paused; %d queued message(s) held", campaign_id, n)
        return await self.view(campaign_id)

    async def resume(self, campaign_id: UUID, api_key_id: int | None) -> dict[str, Any]:
        campaign = await self._get(campaign_id)
        now = self._clock()
        to = S.SCHEDULED if campaign.schedule_at and campaign.schedule_at > now else S.RUNNING
        await self._move(campaign, to, (S.PAUSED,), api_key_id, "resume")
        if to == S.RUNNING:
            self.gate.add(campaign_id)
        return await self.view(campaign_id)

    async def cancel(self, campaign_id: UUID, api_key_id: int | None) -> dict[str, Any]:
        campaign = await self._get(campaign_id)
        self.gate.discard(campaign_id)
        await self._move(campaign, S.CANCELLED, (S.DRAFT, S.APPROVED, S.SCHEDULED, S.RUNNING,
                                                 S.PAUSED), api_key_id, "cancel")
        self.gate.discard(campaign_id)
        n = await self.store.cancel_waiting(campaign_id, "campaign cancelled")
        log.info("campaign %s cancelled; %d waiting message(s) cancelled", campaign_id, n)
        return await self.view(campaign_id)

    # -- views ---------------------------------------------------------------------------
    def links_tps(self) -> float:
        return max(1.0, self._tps())

    def estimate(self, campaign: Campaign, counts: Mapping[str, int] | None = None
                 ) -> dict[str, Any]:
        est = dict(campaign.estimate)
        segments = int(est.get("segments", 0))
        tps = self.links_tps()
        now = self._clock()
        start = max(now, campaign.schedule_at) if campaign.schedule_at else now
        window = self.window if campaign.message_class == "advertising" else None
        if counts is not None:  # what is left to send
            total = sum(counts.values()) or 1
            waiting = sum(counts.get(s, 0) for s in WAITING)
            segments = round(segments * waiting / total)
        seconds, eta = send_eta(segments, tps, start, window)
        starts = window.next_open(start) if window else start
        est.update({"cost_segments": int(est.get("segments", 0)), "tps": tps,
                    "send_seconds": round(seconds, 1), "starts_at": starts.isoformat(),
                    "eta_at": eta.isoformat(),
                    "window": window.describe() if window else None})
        return est

    async def progress(self, campaign: Campaign, counts: dict[str, int] | None = None
                       ) -> dict[str, Any]:
        """``counts`` when known (a fresh upload: all held), else counted."""
        if counts is None:
            counts = await self.store.counts(campaign.id)
        total = sum(counts.values())
        waiting = sum(counts[s] for s in WAITING)
        final_failed = sum(counts[s] for s in FINAL_FAILED)
        rate = 0.0 if campaign.started_at is None else \
            await self.store.recent_rate(campaign.id, 10.0)
        left = self.estimate(campaign, counts)
        return {"total": total, "counts": counts,
                "sent": total - waiting - counts["cancelled"],
                "done": total - waiting - counts["submitted"],
                "failed": final_failed,
                "percent": round(100.0 * (total - waiting) / total, 1) if total else 100.0,
                "delivered_percent": round(100.0 * counts["delivered"] / total, 1)
                if total else 0.0,
                "rate_per_s": round(rate, 1),
                "eta_seconds": left["send_seconds"] if waiting else 0,
                "eta_at": left["eta_at"] if waiting else None}

    async def view(self, campaign_id: UUID, *, with_rows: bool = True,
                   counts: dict[str, int] | None = None) -> dict[str, Any]:
        campaign = await self._get(campaign_id)
        out = _summary(campaign)
        out["upload"] = dict(campaign.upload)
        if with_rows:
            for kind, key in (("rejected", "rejected_rows"), ("duplicate", "duplicate_rows"),
                              ("suppressed", "suppressed_rows")):
                out["upload"][key] = [{"line": r[0], "value": r[1], "reason": r[3]}
                                      for r in await self.store.rejects(campaign_id, kind=kind)]
        out["estimate"] = self.estimate(campaign)
        out["samples"] = campaign.samples
        out["progress"] = await self.progress(campaign, counts)
        out["source"] = campaign.source
        return out

    async def summaries(self) -> list[dict[str, Any]]:
        out = []
        for campaign in await self.store.recent():
            item = _summary(campaign)
            item["upload"] = dict(campaign.upload)
            item["progress"] = await self.progress(campaign)
            out.append(item)
        return out

    async def timeline(self, campaign_id: UUID) -> list[dict[str, Any]]:
        await self._get(campaign_id)
        points, delivered, failed = [], 0, 0
        for t, d, f in await self.store.timeline(campaign_id, 5):
            delivered += d
            failed += f
            points.append({"t": t.isoformat(), "delivered": delivered, "failed": failed})
        return points

    async def report_csv(self, campaign_id: UUID, *, masked: bool) -> AsyncIterator[str]:
        """The per-recipient report, then the rows that were not sent, then a summary."""
        campaign = await self._get(campaign_id)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")

        def flush() -> str:
            text = buf.getvalue()
            buf.seek(0)
            buf.truncate()
            return text

        writer.writerow(["line", "msisdn", "status", "encoding", "segments", "created_at",
                         "submitted_at", "done_at", "error", "link"])
        counts: dict[str, int] = {}
        async for rows in self.store.report_rows(campaign_id):
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
                writer.writerow([
                    r["campaign_line"], mask_msisdn(r["msisdn"]) if masked else r["msisdn"],
                    r["status"], r["encoding"], r["segments"], _iso(r["created_at"]),
                    _iso(r["submitted_at"]), _iso(r["done_at"]), r["last_error"] or "",
                    r["link"] or ""])
            yield flush()
        for line, value, kind, reason in await self.store.all_rejects(campaign_id):
            counts[kind] = counts.get(kind, 0) + 1
            shown = mask_msisdn(value) if masked and value.isdigit() else value
            writer.writerow([line, shown, kind, "", "", "", "", "", reason, ""])
        writer.writerow([])
        writer.writerow(["summary", campaign.name, campaign.status])
        for key in sorted(counts):
            writer.writerow(["summary", key, counts[key]])
        yield flush()

    # -- running -------------------------------------------------------------------------
    async def tick(self, enqueue: Enqueue) -> int:
        """One pass of the runner; returns how many messages it released."""
        now = self._clock()
        for cid in await self.store.due_scheduled(now):
            log.info("campaign %s: scheduled time reached, running", cid)
        mark = self.gate.mark()
        running = await self.store.running()
        self.gate.replace({c.id for c in running}, since=mark)
        released = 0
        links_tps = self.links_tps()
        target = max(self._campaigns.min_release, int(self._campaigns.lookahead_s * links_tps))
        # jobs of at most job_size and about a second of the links' sending, so that several
        # gateway processes share a slow campaign (and a crash strands little)
        size = min(self._campaigns.job_size, max(50, int(links_tps)))
        for campaign in running:
            if campaign.message_class == "advertising" and not self.window.is_open(now):
                continue
            room = target - await self.store.in_pipeline(campaign.id)
            ids: list[UUID] = []
            if room > 0:
                ids = await self.store.release(campaign.id, room, now)
                for i in range(0, len(ids), size):
                    await enqueue(ids[i:i + size])
                released += len(ids)
            if len(ids) < room:
                moving, held, _ = await self.store.waiting(campaign.id)
                if moving == 0 and held == 0:
                    await self.store.move(campaign.id, S.COMPLETED, allowed_from=(S.RUNNING,),
                                          api_key_id=None, detail="every message sent")
                    log.info("campaign %s completed", campaign.id)
        await self.store.recancel_recent()
        return released

    async def run(self, enqueue: Enqueue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(enqueue)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres/Redis down: keep trying
                log.warning("campaign runner pass failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._campaigns.tick_s)


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def _summary(c: Campaign) -> dict[str, Any]:
    return {"id": str(c.id), "name": c.name, "class": c.message_class, "sender": c.sender,
            "advertiser": c.advertiser, "template": c.template, "status": c.status,
            "file_name": c.file_name, "created_by": c.created_by, "approved_by": c.approved_by,
            "created_at": _iso(c.created_at), "approved_at": _iso(c.approved_at),
            "schedule_at": _iso(c.schedule_at) or None, "started_at": _iso(c.started_at) or None,
            "paused_at": _iso(c.paused_at) or None, "finished_at": _iso(c.finished_at) or None}
