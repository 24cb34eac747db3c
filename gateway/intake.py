"""Accepting one message: validate, render, count, store, enqueue.

The row is written to Postgres first; only then is the job enqueued. If Redis is down or the
process dies between the two, the row stays ``queued`` and the sweeper enqueues it later, so
an accepted message is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from gateway.config import SendingConfig
from gateway.domain import MAX_SEGMENTS, Encoding, MessageClass, Priority
from gateway.masking import mask_msisdn
from gateway.numbers import InvalidNumber, normalise_msisdn
from gateway.queue import BatchingEnqueuer
from gateway.smpp.encoding import TextInfo, analyse, encode_message, khong_dau, normalise
from gateway.store.messages import MessageRecord, MessageStore, NewMessage
from gateway.templating import TemplateError, TemplateRenderer

log = logging.getLogger("smsgw.intake")

_SENDER_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_. ")


def label_advertising(text: str, refusal: str) -> str:
    """Decree 91/2020: an advertising SMS starts with [QC] (or [AD]) and ends with how to
    refuse. Adds what is missing; a text that already complies is left as it is."""
    body = text.strip()
    if not body.upper().startswith(("[QC]", "[AD]")):
        body = f"[QC] {body}"
    refusal = refusal.strip()
    if refusal and not khong_dau(body).lower().rstrip(" .!").endswith(
            khong_dau(refusal).lower().rstrip(" .!")):
        body = f"{body.rstrip()} {refusal}" if body.endswith((".", "!", "?")) \
            else f"{body.rstrip()}. {refusal}"
    return body


def analyse_ucs2(text: str) -> TextInfo:
    """Counts for ``text`` sent as UCS-2 although GSM-7 could carry it (data_coding 8)."""
    enc = encode_message(text, ref=0, force_ucs2=True)
    units = len(enc.text.encode("utf-16-be")) // 2
    return TextInfo(encoding=enc.encoding, segments=enc.segments, units=units,
                    ucs2_chars=enc.ucs2_chars)


class IntakeError(Exception):
    """The caller's request is wrong; ``field`` and ``reason`` go back in the 4xx body."""

    def __init__(self, field: str, reason: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    to: str
    text: str | None = None
    template: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    sender: str | None = None
    idempotency_key: str | None = None
    khong_dau: bool = False
    message_class: MessageClass | None = None
    #: per-message SMPP options (validity_s, registered_delivery, priority_flag, data_coding,
    #: source_ton, source_npi), already range-checked by the HTTP layer
    options: Mapping[str, int] = field(default_factory=dict)


def check_sender(sender: str) -> str:
    """Brandname ≤ 11 chars of Latin letters, digits, - _ . space; or a numeric sender."""
    if sender.isdigit():
        if len(sender) > 20:
            raise IntakeError("sender", "a numeric sender has at most 20 digits")
        return sender
    if not sender or len(sender) > 11:
        raise IntakeError("sender", "a brandname has 1 to 11 characters")
    bad = sorted(set(sender) - _SENDER_OK)
    if bad:
        raise IntakeError("sender", f"a brandname may only use Latin letters, digits, '-', '_', "
                                    f"'.' and space; found {''.join(bad)!r}")
    return sender


class Intake:
    def __init__(self, *, store: MessageStore, queue: BatchingEnqueuer | None,
                 renderer: TemplateRenderer, sending: SendingConfig,
                 fast_lane: Callable[[UUID], None] | None = None) -> None:
        self._store = store
        self._queue = queue
        self._renderer = renderer
        self._sending = sending
        # Care and transactional messages are also handed straight to this process's sender;
        # the arq job stays the durable path (it finds the row claimed and does nothing).
        self._fast_lane = fast_lane

    def _body(self, req: SendRequest) -> tuple[str, MessageClass, str | None]:
        if (req.text is None) == (req.template is None):
            raise IntakeError("text", "give exactly one of 'text' or 'template' (+ 'data')")
        if req.template is not None:
            try:
                meta = self._renderer.meta(req.template)
                rendered = self._renderer.render(req.template, req.data, khong_dau=req.khong_dau)
            except TemplateError as exc:
                field_name = "template" if exc.template is None or "unknown" in exc.reason \
                    else "data"
                raise IntakeError(field_name, exc.reason) from exc
            return rendered.text, req.message_class or meta.message_class, meta.sender
        text = normalise(req.text or "").strip()
        if not text:
            raise IntakeError("text", "is empty")
        if req.khong_dau:
            text = khong_dau(text)
        return text, req.message_class or MessageClass.CARE, None

    async def submit(self, req: SendRequest, *, api_key_id: int | None) -> tuple[
            MessageRecord, bool]:
        """Store and enqueue one message; returns (record, created)."""
        try:
            msisdn = normalise_msisdn(req.to, region=self._sending.region)
        except InvalidNumber as exc:
            raise IntakeError("to", f"{exc.value!r} is not a usable mobile number: "
                                    f"{exc.reason}") from exc
        body, message_class, template_sender = self._body(req)
        if message_class is MessageClass.ADVERTISING:
            body = label_advertising(body, self._sending.refusal)
        sender = check_sender(req.sender or template_sender or self._sending.default_sender)
        options = dict(req.options)
        if not req.sender and not template_sender:
            options["default_sender"] = 1  # a link's own default_sender may replace it
        if req.options.get("data_coding") == 0 and analyse(body).encoding is not Encoding.GSM7:
            raise IntakeError("data_coding", "0 (GSM 7-bit) cannot carry this text; use "
                                             "khong_dau, or data_coding 8")
        info = analyse(body)
        if req.options.get("data_coding") == 8 and info.encoding is Encoding.GSM7:
            info = analyse_ucs2(body)
        if info.segments > MAX_SEGMENTS:
            raise IntakeError("text", f"is {info.segments} SMS parts long ({info.encoding}, "
                                      f"{info.units} units); the limit is {MAX_SEGMENTS}")
        if req.idempotency_key is not None and not 1 <= len(req.idempotency_key) <= 200:
            raise IntakeError("idempotency_key", "must be 1 to 200 characters")
        record, created = await self._store.create(NewMessage(
            msisdn=msisdn, sender=sender, body=body, encoding=info.encoding,
            segments=info.segments, message_class=message_class,
            priority=Priority.CARE if message_class is MessageClass.CARE else Priority.BULK,
            template=req.template, khong_dau=req.khong_dau,
            idempotency_key=req.idempotency_key, api_key_id=api_key_id,
            options=options))
        if created:
            log.info("message %s to %s queued (%s, %d part(s))", record.id, mask_msisdn(msisdn),
                     info.encoding.value, info.segments)
            await self._enqueue(record)
        return record, created

    async def _enqueue(self, record: MessageRecord) -> None:
        bulk = record.priority >= Priority.BULK
        if self._queue is not None:
            self._queue.add(record.id, bulk=bulk)
        if self._fast_lane is not None and not bulk:
            self._fast_lane(record.id)
