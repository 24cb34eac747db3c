"""Self-service requests by SMS (issue 6): the keyword actions that record them.

=====================  ==================  ============================================
keyword                action name         what happens
=====================  ==================  ============================================
TAM NGUNG              ``suspend``         destructive: asks for "Y" within 10 minutes
MO LAI                 ``reconnect``       recorded as confirmed, posted to the back office
DOI SIM                ``sim_swap``        destructive
CHUYEN TRA SAU         ``to_postpaid``     destructive
CHUYEN TRA TRUOC       ``to_prepaid``      destructive
DOI DIA CHI <address>  ``change_address``  recorded as confirmed (the address in ``args``)
Y                      ``confirm``         confirms the number's newest awaiting request
=====================  ==================  ============================================

Destructive means that a request sent by someone else from the handset, or by mistake, costs
the subscriber service (a suspension, a SIM swap that moves the number to another SIM, a
change of payment type); reconnecting and a new postal address do not, so they skip the "Y".

A confirmed request gets a reference (``YC…``) in the reply and is handed to ``enqueue``
(an arq job that posts it to the back office, jobs/webhooks.py). If enqueueing fails (Redis
down) the reply still goes out: the request is recorded as confirmed and the sweeper
(:func:`jobs.webhooks.sweep_service_requests`) enqueues it later.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType

from gateway.actions import Action, ActionResult, MoContext
from gateway.masking import mask_msisdn
from gateway.store.service_requests import (
    RequestKind,
    RequestStatus,
    ServiceRequest,
    ServiceRequestStore,
)

log = logging.getLogger("smsgw.actions.selfservice")

#: Enqueues the back-office post of one confirmed request (by id).
Enqueue = Callable[[int], Awaitable[None]]

ACTION_REQUEST = "service_request"
ACTION_CONFIRM = "service_request_confirm"
CONFIRM_ACTION_NAME = "confirm"

TEMPLATE_REQUEST = "keyword_request"
TEMPLATE_CONFIRM = "keyword_confirm"
TEMPLATE_CONFIRM_EXPIRED = "keyword_confirm_expired"

DEFAULT_CONFIRM_WINDOW_S = 600.0
MAX_ADDRESS_CHARS = 200

#: The keywords of each action (for the router's table and the help text).
KEYWORDS: Mapping[str, str] = MappingProxyType({
    "TAM NGUNG": RequestKind.SUSPEND.value,
    "MO LAI": RequestKind.RECONNECT.value,
    "DOI SIM": RequestKind.SIM_SWAP.value,
    "CHUYEN TRA SAU": RequestKind.TO_POSTPAID.value,
    "CHUYEN TRA TRUOC": RequestKind.TO_PREPAID.value,
    "DOI DIA CHI": RequestKind.CHANGE_ADDRESS.value,
    "Y": CONFIRM_ACTION_NAME,
})

#: Requests that wait for the subscriber's "Y".
DESTRUCTIVE: frozenset[RequestKind] = frozenset({
    RequestKind.SUSPEND, RequestKind.SIM_SWAP, RequestKind.TO_POSTPAID, RequestKind.TO_PREPAID,
})

#: How the replies name each request.
LABELS: Mapping[RequestKind, str] = MappingProxyType({
    RequestKind.SUSPEND: "tạm ngưng dịch vụ",
    RequestKind.RECONNECT: "mở lại dịch vụ",
    RequestKind.SIM_SWAP: "đổi SIM",
    RequestKind.TO_POSTPAID: "chuyển sang trả sau",
    RequestKind.TO_PREPAID: "chuyển sang trả trước",
    RequestKind.CHANGE_ADDRESS: "đổi địa chỉ",
})

ADDRESS_HELP = ("Để đổi địa chỉ, vui lòng soạn DOI DIA CHI <địa chỉ mới> (tối đa "
                f"{MAX_ADDRESS_CHARS} ký tự) gửi {{shortcode}}.")

_LEADING_PUNCTUATION = ":-–—,.;= "
_SPACES_RE = re.compile(r"\s+")


def is_destructive(kind: RequestKind | str) -> bool:
    return RequestKind(kind) in DESTRUCTIVE


def parse_address(args: Sequence[str]) -> str | None:
    """The address in the words after DOI DIA CHI: NFC, control characters dropped, spaces
    collapsed, a leading ":" or "-" removed. None when empty or over MAX_ADDRESS_CHARS."""
    text = unicodedata.normalize("NFC", " ".join(args))
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    text = _SPACES_RE.sub(" ", text).strip().lstrip(_LEADING_PUNCTUATION).strip()
    if not text or len(text) > MAX_ADDRESS_CHARS:
        return None
    return text


async def _enqueue(enqueue: Enqueue, request: ServiceRequest) -> None:
    try:
        await enqueue(request.id)
    except Exception as exc:  # the row is confirmed: the sweeper enqueues it later
        log.warning("could not enqueue service request %s (%s: %s); the sweeper will retry",
                    request.reference, type(exc).__name__, exc)


def _request_reply(request: ServiceRequest, detail: str, action: str) -> ActionResult:
    return ActionResult(
        action=action, detail=detail, reply_template=TEMPLATE_REQUEST,
        reply_data={"reference": request.reference, "request_name": LABELS[request.kind]})


def _expired_reply(reference: str, detail: str, action: str) -> ActionResult:
    return ActionResult(action=action, detail=detail,
                        reply_template=TEMPLATE_CONFIRM_EXPIRED,
                        reply_data={"reference": reference})


class ServiceRequestAction:
    """TAM NGUNG, MO LAI, DOI SIM, CHUYEN TRA SAU/TRUOC, DOI DIA CHI: record one request."""

    def __init__(self, kind: RequestKind | str, store: ServiceRequestStore, enqueue: Enqueue,
                 *, destructive: bool,
                 confirm_window_s: float = DEFAULT_CONFIRM_WINDOW_S) -> None:
        if confirm_window_s <= 0:
            raise ValueError("confirm_window_s must be > 0")
        self.kind = RequestKind(kind)
        self.destructive = destructive
        self.confirm_window_s = confirm_window_s
        self._store = store
        self._enqueue = enqueue

    async def __call__(self, ctx: MoContext) -> ActionResult:
        args: dict[str, str] = {}
        if self.kind is RequestKind.CHANGE_ADDRESS:
            address = parse_address(ctx.args)
            if address is None:
                return ActionResult(action=ACTION_REQUEST,
                                    detail=f"{self.kind.value}: no usable address",
                                    reply_text=ADDRESS_HELP.format(shortcode=ctx.destination))
            args["address"] = address
        confirm_by = (ctx.received_at + timedelta(seconds=self.confirm_window_s)
                      if self.destructive else None)
        request = await self._store.create(
            self.kind, ctx.msisdn, requested_at=ctx.received_at, args=args,
            inbound_id=ctx.inbound_id, confirm_by=confirm_by)
        detail = f"{self.kind.value} {request.reference} {request.status.value}"
        if request.status is RequestStatus.AWAITING_CONFIRMATION:
            log.info("service request %s of %s awaits confirmation", request.reference,
                     mask_msisdn(ctx.msisdn))
            return ActionResult(
                action=ACTION_REQUEST, detail=detail, reply_template=TEMPLATE_CONFIRM,
                reply_data={"reference": request.reference,
                            "request_name": LABELS[self.kind],
                            "shortcode": ctx.destination,
                            "window_min": max(1, round(self.confirm_window_s / 60))})
        if request.status is RequestStatus.EXPIRED:  # the same MO again, after its window
            return _expired_reply(request.reference, detail, ACTION_REQUEST)
        if request.status is RequestStatus.CONFIRMED:
            await _enqueue(self._enqueue, request)
        return _request_reply(request, detail, ACTION_REQUEST)


class ConfirmAction:
    """"Y": confirm the number's newest request awaiting confirmation, if still in time."""

    def __init__(self, store: ServiceRequestStore, enqueue: Enqueue) -> None:
        self._store = store
        self._enqueue = enqueue

    async def __call__(self, ctx: MoContext) -> ActionResult:
        at = ctx.received_at
        pending = await self._store.pending_confirmation(ctx.msisdn, at)
        confirmed = None if pending is None else await self._store.confirm(pending.id, at=at)
        if confirmed is None:
            expired = await self._store.expire_overdue(at, msisdn=ctx.msisdn)
            newest = max(expired, key=lambda r: (r.requested_at, r.id), default=None)
            reference = "" if newest is None else newest.reference
            log.info("Y from %s: nothing awaiting confirmation%s", mask_msisdn(ctx.msisdn),
                     f" ({reference} expired)" if reference else "")
            detail = (f"nothing to confirm ({reference} expired)" if reference
                      else "nothing to confirm")
            return _expired_reply(reference, detail, ACTION_CONFIRM)
        await _enqueue(self._enqueue, confirmed)
        detail = f"{confirmed.kind.value} {confirmed.reference} confirmed"
        return _request_reply(confirmed, detail, ACTION_CONFIRM)


def build_actions(store: ServiceRequestStore, enqueue: Enqueue, *,
                  confirm_window_s: float = DEFAULT_CONFIRM_WINDOW_S) -> dict[str, Action]:
    """Every self-service action by its name (the router's ``actions`` entries)."""
    actions: dict[str, Action] = {
        kind.value: ServiceRequestAction(kind, store, enqueue, destructive=is_destructive(kind),
                                         confirm_window_s=confirm_window_s)
        for kind in RequestKind
    }
    actions[CONFIRM_ACTION_NAME] = ConfirmAction(store, enqueue)
    return actions
