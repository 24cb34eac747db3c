"""TC / DK QC / KT CUOC without services: reply data, the one-confirmation rule, bill wording."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, cast
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from gateway.actions import MoContext
from gateway.actions.bill import BillInfo, BillLookupAction, parse_bill
from gateway.actions.consent import (
    CONFIRMATION_WINDOW,
    OptInAdsAction,
    RefuseAdsAction,
    local_time_text,
    needs_confirmation,
)
from gateway.config import SendingConfig
from gateway.domain import Encoding, MessageClass
from gateway.store.consent import (
    ConsentAction,
    ConsentChange,
    ConsentEntry,
    ConsentSource,
    ConsentStore,
)
from gateway.store.events import BillStatus, EventStore, LatestBill
from gateway.store.messages import MessageStore
from gateway.templating import DEFAULT_TEMPLATES_DIR, TemplateRenderer, template_defaults

VN = ZoneInfo("Asia/Ho_Chi_Minh")
NEW_TEMPLATES = ("keyword_refused", "keyword_optin", "keyword_bill", "keyword_bill_unavailable")
NO_POOL = cast(asyncpg.Pool, None)


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(DEFAULT_TEMPLATES_DIR, defaults=template_defaults(SendingConfig()))


def _ctx(keyword: str, received_at: datetime, msisdn: str = "84912345678") -> MoContext:
    return MoContext(inbound_id=uuid.uuid4(), msisdn=msisdn, destination="1234",
                     text=keyword, received_at=received_at, link="main", keyword=keyword)


def _change(*, changed: bool, refused: bool, at: datetime,
            nearest: datetime | None) -> ConsentChange:
    entry = ConsentEntry(id=1, msisdn="84912345678",
                         action=ConsentAction.REFUSE if refused else ConsentAction.OPT_IN,
                         scope="advertising", source=ConsentSource.SMS, source_ref=None, at=at,
                         effective_at=at, changed=changed, recorded_at=at)
    return ConsentChange(entry=entry, refused=refused, nearest_sms_refusal_at=nearest)


class FakeConsent(ConsentStore):
    """Answers like the store would for a number with the given state."""

    def __init__(self, *, changed: bool, refused: bool, nearest: datetime | None = None,
                 suppressed: str | None = None) -> None:
        super().__init__(NO_POOL)
        self.changed = changed
        self.refused = refused
        self.nearest = nearest
        self.suppressed = suppressed
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def refuse(self, msisdn: str, **kw: Any) -> ConsentChange:
        self.calls.append(("refuse", kw))
        return _change(changed=self.changed, refused=self.refused, at=kw["at"],
                       nearest=self.nearest)

    async def opt_in(self, msisdn: str, **kw: Any) -> ConsentChange:
        self.calls.append(("optin", kw))
        return _change(changed=self.changed, refused=self.refused, at=kw["at"],
                       nearest=self.nearest)

    async def is_suppressed(self, msisdn: str) -> str | None:
        return self.suppressed


class FakeMessages(MessageStore):
    def __init__(self) -> None:
        super().__init__(NO_POOL)
        self.cancelled: list[tuple[str, str]] = []

    async def cancel_pending_advertising(self, msisdn: str, reason: str) -> int:
        self.cancelled.append((msisdn, reason))
        return 2


class FakeEvents(EventStore):
    def __init__(self, bill: LatestBill | None) -> None:
        super().__init__(NO_POOL)
        self.bill = bill

    async def latest_bill(self, msisdn: str) -> LatestBill | None:
        return self.bill


# --------------------------------------------------------------------------- times


def test_local_time_is_asia_ho_chi_minh() -> None:
    assert local_time_text(datetime(2026, 11, 20, 7, 5, tzinfo=UTC), VN) == "14:05 20/11/2026"
    # 20:30 UTC is already the next day in Việt Nam
    assert local_time_text(datetime(2026, 11, 20, 20, 30, tzinfo=UTC), VN) == "03:30 21/11/2026"
    plus9 = timezone(timedelta(hours=9))
    assert local_time_text(datetime(2026, 1, 1, 9, 0, tzinfo=plus9), VN) == "07:00 01/01/2026"
    with pytest.raises(ValueError, match="naive"):
        local_time_text(datetime(2026, 1, 1, 9, 0), VN)


async def test_refusal_reply_data_in_local_time() -> None:
    consent, messages = FakeConsent(changed=True, refused=True), FakeMessages()
    ctx = _ctx("TC", datetime(2026, 11, 20, 16, 59, tzinfo=UTC))
    result = await RefuseAdsAction(consent, messages)(ctx)
    assert result.action == "refuse_ads"
    assert result.reply_template == "keyword_refused"
    assert dict(result.reply_data) == {"received_at": "23:59 20/11/2026",
                                       "effective_from": "23:59 20/11/2026"}
    assert consent.calls == [("refuse", {"source": ConsentSource.SMS,
                                         "source_ref": str(ctx.inbound_id),
                                         "at": ctx.received_at})]
    assert messages.cancelled and messages.cancelled[0][0] == ctx.msisdn
    assert "2 queued advertising" in result.detail
    assert ctx.msisdn not in result.detail


async def test_repeated_refusal_within_24h_gets_no_reply() -> None:
    now = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    consent = FakeConsent(changed=False, refused=True, nearest=now - timedelta(hours=3))
    messages = FakeMessages()
    result = await RefuseAdsAction(consent, messages)(_ctx("TC", now))
    assert result.reply_template is None and result.reply_text is None
    assert result.handled
    assert len(messages.cancelled) == 1  # still withdraws what was queued since


async def test_refusal_overridden_by_newer_opt_in_is_not_confirmed() -> None:
    messages = FakeMessages()
    result = await RefuseAdsAction(FakeConsent(changed=False, refused=False), messages)(
        _ctx("TC", datetime(2026, 11, 20, 8, 0, tzinfo=UTC)))
    assert result.reply_template is None
    assert messages.cancelled == []


def test_needs_confirmation_rule() -> None:
    now = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    first = _change(changed=True, refused=True, at=now, nearest=None)
    assert needs_confirmation(first, now)
    # a change is always confirmed, even right after an earlier TC (e.g. TC, DK QC, TC)
    assert needs_confirmation(_change(changed=True, refused=True, at=now,
                                      nearest=now - timedelta(minutes=5)), now)
    for gap, expected in ((timedelta(minutes=1), False), (timedelta(hours=23), False),
                          (CONFIRMATION_WINDOW, True), (timedelta(days=3), True)):
        again = _change(changed=False, refused=True, at=now, nearest=now - gap)
        assert needs_confirmation(again, now) is expected, gap
    # an earlier TC processed late (its MO flushed after this one) counts as well
    assert not needs_confirmation(
        _change(changed=False, refused=True, at=now, nearest=now + timedelta(minutes=2)), now)
    # refused only by an import or the API: no SMS refusal recorded, so confirm
    assert needs_confirmation(_change(changed=False, refused=True, at=now, nearest=None), now)


async def test_opt_in_reply_data() -> None:
    ctx = _ctx("DK QC", datetime(2026, 11, 21, 2, 30, tzinfo=UTC))
    result = await OptInAdsAction(FakeConsent(changed=True, refused=False))(ctx)
    assert result.reply_template == "keyword_optin"
    assert dict(result.reply_data) == {"received_at": "09:30 21/11/2026", "shortcode": "1234"}
    dnc = await OptInAdsAction(
        FakeConsent(changed=True, refused=False, suppressed="Do-Not-Call"))(ctx)
    assert "Do-Not-Call" in dnc.detail
    stale = await OptInAdsAction(FakeConsent(changed=False, refused=True))(ctx)
    assert stale.reply_template is None and "still refused" in stale.detail


# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize("name", NEW_TEMPLATES)
def test_keyword_templates_render_their_sample(renderer: TemplateRenderer, name: str) -> None:
    meta = renderer.meta(name)
    assert meta.message_class is MessageClass.CARE
    assert meta.sender == "CSKH"
    assert meta.max_segments <= 2
    out = renderer.render(name, meta.sample)
    assert out.warnings == ()
    assert out.encoding is Encoding.UCS2 and out.segments <= 2
    assert "  " not in out.text and "None" not in out.text
    plain = renderer.render(name, meta.sample, khong_dau=True)
    assert plain.encoding is Encoding.GSM7 and plain.warnings == ()


def test_refusal_confirmation_has_no_advertising(renderer: TemplateRenderer) -> None:
    out = renderer.render("keyword_refused", {"received_at": "14:05 20/11/2026",
                                              "effective_from": "14:05 20/11/2026"})
    assert out.text == ("Đã nhận yêu cầu từ chối tin quảng cáo của Quý khách lúc 14:05 "
                        "20/11/2026. Chúng tôi ngừng gửi tin quảng cáo từ 14:05 20/11/2026.")
    lowered = out.text.lower()
    for word in ("[qc]", "khuyến mãi", "ưu đãi", "gói", "đăng ký", "soạn", "http", "www"):
        assert word not in lowered, word


BILL = {"period": "11/2026", "amount": 1250000, "due_date": "2026-12-20"}


@pytest.mark.parametrize(
    ("status", "due_date", "expected"),
    [
        ("paid", "2026-12-20", "Cước tháng 11/2026: 1.250.000đ, đã thanh toán. Cảm ơn Quý khách! "
                               "Hỗ trợ: 18001090."),
        ("due", "2026-12-20", "Cước tháng 11/2026: 1.250.000đ, hạn thanh toán 20/12/2026. "
                              "Hỗ trợ: 18001090."),
        ("issued", "2026-12-20", "Cước tháng 11/2026: 1.250.000đ, hạn thanh toán 20/12/2026. "
                                 "Hỗ trợ: 18001090."),
        ("issued", None, "Cước tháng 11/2026: 1.250.000đ, chưa thanh toán. Hỗ trợ: 18001090."),
        ("overdue", "2026-12-20", "Cước tháng 11/2026: 1.250.000đ, đã quá hạn từ 20/12/2026, "
                                  "vui lòng thanh toán sớm để tránh gián đoạn. Hỗ trợ: 18001090."),
        ("overdue", None, "Cước tháng 11/2026: 1.250.000đ, đã quá hạn, vui lòng thanh toán sớm "
                          "để tránh gián đoạn. Hỗ trợ: 18001090."),
    ],
)
def test_bill_status_wording(renderer: TemplateRenderer, status: str, due_date: str | None,
                             expected: str) -> None:
    out = renderer.render("keyword_bill", {**BILL, "status": status, "due_date": due_date})
    assert out.text == expected
    assert out.segments <= 2 and out.warnings == ()


def test_unavailable_wording(renderer: TemplateRenderer) -> None:
    out = renderer.render("keyword_bill_unavailable", {})
    assert "chưa có thông tin cước" in out.text
    assert "thử lại sau hoặc gọi 18001090" in out.text


# --------------------------------------------------------------------------- bill parsing


def test_parse_bill_accepts_the_documented_shape() -> None:
    bill = parse_bill({"period": " 11/2026 ", "amount": 385000, "due_date": "2026-12-20",
                       "status": "Overdue"})
    assert bill == BillInfo(period="11/2026", amount=385000, due_date=date(2026, 12, 20),
                            status=BillStatus.OVERDUE, source="endpoint")
    assert bill.reply_data() == {"period": "11/2026", "amount": 385000,
                                 "due_date": "2026-12-20", "status": "overdue"}
    paid = parse_bill({"period": "10/2026", "amount": "120000", "due_date": None,
                       "status": "paid"})
    assert paid.amount == 120000 and paid.due_date is None
    assert paid.reply_data()["due_date"] is None
    assert parse_bill({"period": "10/2026", "amount": 5.0, "status": "due"}).amount == 5


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "11/2026",
        {"amount": 1, "status": "due"},
        {"period": "", "amount": 1, "status": "due"},
        {"period": "x" * 21, "amount": 1, "status": "due"},
        {"period": "11\x072026", "amount": 1, "status": "due"},
        {"period": "11/2026", "amount": True, "status": "due"},
        {"period": "11/2026", "amount": 1.5, "status": "due"},
        {"period": "11/2026", "amount": "12k", "status": "due"},
        {"period": "11/2026", "amount": 1, "status": "unknown"},
        {"period": "11/2026", "amount": 1, "status": "due", "due_date": "20/12/2026"},
        {"period": "11/2026", "amount": 1, "status": "due", "due_date": 20261220},
    ],
)
def test_parse_bill_rejects_what_is_not_a_bill(payload: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_bill(payload)


async def test_bill_lookup_without_endpoint_uses_the_stored_bill() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    stored = LatestBill(msisdn="84912345678", period="11/2026", period_key=202611,
                        amount=385000, due_date=date(2026, 12, 20), status=BillStatus.DUE,
                        updated_at=at, event_id="e1", event_received_at=at)
    result = await BillLookupAction(FakeEvents(stored), endpoint=None)(_ctx("KT CUOC", at))
    assert result.reply_template == "keyword_bill"
    assert dict(result.reply_data) == {"period": "11/2026", "amount": 385000,
                                       "due_date": "2026-12-20", "status": "due"}
    assert "postgres" in result.detail
    none = await BillLookupAction(FakeEvents(None), endpoint="")(_ctx("KT CUOC", at))
    assert none.reply_template == "keyword_bill_unavailable" and dict(none.reply_data) == {}


def test_bill_lookup_needs_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        BillLookupAction(FakeEvents(None), endpoint="http://127.0.0.1:9/bill", timeout_s=0)
