"""KT CUOC: the subscriber's latest bill, from the billing system or from what we know.

With an ``endpoint`` configured, ``GET {endpoint}?msisdn=84…`` is asked first and must answer
200 with JSON ``{"period": "11/2026", "amount": 385000, "due_date": "2026-12-20" | null,
"status": "issued" | "due" | "overdue" | "paid"}`` within ``timeout_s`` (the whole exchange).
Anything else (an error, the timeout, another status, a body that is not such a bill) falls
back to the latest bill the billing events kept in Postgres (``latest_bills``). With neither,
the reply is ``keyword_bill_unavailable``; otherwise ``keyword_bill``, whose wording depends
on ``status`` (paid / overdue / issued or due).

Each lookup opens its own short-lived HTTP session (keyword traffic is light), so the action
needs no closing. Log lines never carry the number or the URL (it holds the number).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import aiohttp

from gateway.actions import ActionResult, MoContext
from gateway.masking import mask_msisdn
from gateway.store.events import BillStatus, EventStore, LatestBill

log = logging.getLogger("smsgw.actions.bill")

BILL_TEMPLATE = "keyword_bill"
UNAVAILABLE_TEMPLATE = "keyword_bill_unavailable"
#: Longest billing period text accepted from the endpoint (it is written into the SMS).
MAX_PERIOD_CHARS = 20


class _HttpStatus(Exception):
    """The endpoint answered with another status than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class BillInfo:
    """A bill as the reply needs it."""

    period: str  # e.g. "11/2026"
    amount: int  # đồng
    due_date: date | None
    status: BillStatus
    source: str  # "endpoint" or "postgres"

    def reply_data(self) -> dict[str, Any]:
        """Data of ``keyword_bill`` (plain JSON types: the router may store it)."""
        return {
            "period": self.period,
            "amount": self.amount,
            "due_date": None if self.due_date is None else self.due_date.isoformat(),
            "status": self.status.value,
        }


def _amount(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("amount is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError("amount is not a whole number of đồng")


def _period(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_PERIOD_CHARS:
        raise ValueError("period is not a short text")
    if not value.strip().isprintable():
        raise ValueError("period has control characters")
    return value.strip()


def _due_date(value: object) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("due_date is not an ISO date")
    return date.fromisoformat(value.strip())


def parse_bill(payload: object) -> BillInfo:
    """The endpoint's JSON as a bill; ValueError/TypeError when it is not one."""
    if not isinstance(payload, Mapping):
        raise TypeError("the answer is not a JSON object")
    return BillInfo(
        period=_period(payload.get("period")),
        amount=_amount(payload.get("amount")),
        due_date=_due_date(payload.get("due_date")),
        status=BillStatus(str(payload.get("status", "")).strip().lower()),
        source="endpoint",
    )


def from_latest_bill(bill: LatestBill) -> BillInfo:
    return BillInfo(period=bill.period, amount=bill.amount, due_date=bill.due_date,
                    status=bill.status, source="postgres")


class BillLookupAction:
    """``KT CUOC``: answer with the latest bill, or say it is not known yet."""

    def __init__(
        self,
        events: EventStore,
        *,
        endpoint: str | None,
        timeout_s: float = 3.0,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._events = events
        self._endpoint = endpoint or None
        self._timeout_s = timeout_s
        self._session_factory = session_factory

    async def __call__(self, ctx: MoContext) -> ActionResult:
        bill, failure = await self._ask_endpoint(ctx.msisdn)
        if bill is None:
            latest = await self._events.latest_bill(ctx.msisdn)
            bill = None if latest is None else from_latest_bill(latest)
        note = f"; endpoint: {failure}" if failure else ""
        if bill is None:
            return ActionResult(action="bill_lookup", detail="no bill known" + note,
                                reply_template=UNAVAILABLE_TEMPLATE)
        return ActionResult(
            action="bill_lookup",
            detail=f"bill {bill.period} {bill.status.value} from {bill.source}{note}",
            reply_template=BILL_TEMPLATE,
            reply_data=bill.reply_data(),
        )

    async def _ask_endpoint(self, msisdn: str) -> tuple[BillInfo | None, str | None]:
        """(the endpoint's bill, None) or (None, why not); (None, None) with no endpoint."""
        if self._endpoint is None:
            return None, None
        failure: str
        try:
            async with asyncio.timeout(self._timeout_s):
                payload = await self._get(self._endpoint, msisdn)
            return parse_bill(payload), None
        except TimeoutError:
            failure = f"no answer within {self._timeout_s:g} s"
        except _HttpStatus as exc:
            failure = f"HTTP {exc.status}"
        except aiohttp.ClientError as exc:
            failure = f"request failed ({type(exc).__name__})"
        except (ValueError, TypeError) as exc:  # not JSON, or not a bill
            failure = f"bad answer ({str(exc)[:80]})"
        log.warning("billing endpoint failed for %s: %s; using the stored bill",
                    mask_msisdn(msisdn), failure)
        return None, failure

    async def _get(self, endpoint: str, msisdn: str) -> object:
        async with self._session_factory() as session, session.get(
            endpoint, params={"msisdn": msisdn}
        ) as resp:
            if resp.status != 200:
                raise _HttpStatus(resp.status)
            payload: object = await resp.json(content_type=None)
            return payload
