"""Keyword actions: what an inbound SMS keyword does (subscriber self-service, issue 6).

The keyword router (gateway/keywords.py) matches the first word(s) of an inbound message and
calls one :class:`Action`; the action does its work (consent ledger, bill lookup, a service
request, …) and returns an :class:`ActionResult` saying what to reply. The router records the
MO, the match and the result, applies the reply rate limit and sends the reply through the
normal pipeline as a care message (priority lane). Actions never send SMS themselves and
never render subscriber text as a template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID


@dataclass(frozen=True, slots=True, kw_only=True)
class MoContext:
    """One inbound message as an action sees it."""

    inbound_id: UUID  # inbound_messages.id
    msisdn: str  # the subscriber, E.164 digits (84…)
    destination: str  # the short code / number they wrote to
    text: str  # the full text, as received (untrusted data: never a template)
    received_at: datetime  # timezone-aware
    link: str  # the SMSC link it came on
    keyword: str  # the canonical keyword matched, e.g. "TC", "KT CUOC"
    args: Sequence[str] = ()  # the words after the keyword, original spelling


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionResult:
    """What happened and what to answer. ``reply_template`` (a template in templates_sms/,
    rendered with ``reply_data``) or ``reply_text`` (plain text we wrote, never subscriber
    text); both None = no reply."""

    action: str  # e.g. "refuse_ads", "bill_lookup", "service_request"
    detail: str = ""  # recorded with the MO (no personal data beyond what the MO had)
    reply_template: str | None = None
    reply_data: Mapping[str, Any] = field(default_factory=dict)
    reply_text: str | None = None
    handled: bool = True  # False: the action declined (the router falls back to help)


class Action(Protocol):
    """A keyword action: ``await action(ctx)`` → what to reply."""

    async def __call__(self, ctx: MoContext) -> ActionResult: ...
