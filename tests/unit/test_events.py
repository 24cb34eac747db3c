"""Billing and care events without a database: configuration, payload and field checks."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, cast
from uuid import uuid4

import pytest

from gateway.config import ConfigError
from gateway.domain import Encoding, MessageStatus
from gateway.events import (
    BILL_STATUS_OF_TYPE,
    EVENT_TYPES,
    EventResult,
    EventsConfig,
    EventService,
    bill_update,
    check_event_id,
    parse_amount,
    parse_due_date,
    parse_period,
)
from gateway.http.events import event_detail, event_summary, parse_event
from gateway.intake import Intake, IntakeError
from gateway.store.events import BillStatus, BillUpdate, EventMessage, EventRow, EventStore

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
TEMPLATES_OF_ISSUE = {
    "bill_issued", "payment_due", "overdue", "suspended_one_way", "suspended_two_way",
    "payment_received", "usage_high", "package_expiring", "incident", "incident_fixed",
}


# --- EventsConfig ---------------------------------------------------------------------------


def test_default_config_maps_every_type_to_its_own_template() -> None:
    cfg = EventsConfig()
    assert set(EVENT_TYPES) == TEMPLATES_OF_ISSUE
    assert dict(cfg.templates) == {t: t for t in EVENT_TYPES}


def test_config_overrides_some_types_and_keeps_the_others() -> None:
    cfg = EventsConfig.from_mapping({"templates": {"overdue": "overdue_v2"}})
    assert cfg.templates["overdue"] == "overdue_v2"
    assert cfg.templates["bill_issued"] == "bill_issued"
    assert len(cfg.templates) == len(EVENT_TYPES)
    with pytest.raises(TypeError):
        cast(Any, cfg.templates)["overdue"] = "x"  # read-only
    assert EventsConfig.from_mapping({}) == EventsConfig()


@pytest.mark.parametrize(("raw", "needle"), [
    ({"templates": {"birthday": "birthday"}}, "unknown event type(s) birthday"),
    ({"templates": {"overdue": "Overdue!"}}, "events.templates.overdue"),
    ({"templates": {"overdue": 3}}, "events.templates.overdue"),
    ({"templates": ["overdue"]}, "must be a table"),
    ({"template": {}}, "unknown key(s) in [events]: template"),
])
def test_config_refuses_mistakes(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        EventsConfig.from_mapping(raw)
    assert needle in str(err.value)


def test_config_checks_direct_construction_too() -> None:
    with pytest.raises(ConfigError, match="unknown event type"):
        EventsConfig(templates={"sms": "sms"})


# --- request shape --------------------------------------------------------------------------


def test_parse_event_accepts_the_four_fields() -> None:
    event = parse_event({"event_id": "b-1", "type": "overdue", "msisdn": "0912345678",
                         "data": {"amount": 1}})
    assert (event.event_id, event.type, event.msisdn, dict(event.data)) == \
        ("b-1", "overdue", "0912345678", {"amount": 1})
    assert parse_event({"event_id": "b", "type": "t", "msisdn": "m"}).data == {}
    assert parse_event({"event_id": "b", "type": "t", "msisdn": "m", "data": None}).data == {}


@pytest.mark.parametrize(("body", "field", "status"), [
    ({"type": "overdue", "msisdn": "0912345678"}, "event_id", 422),
    ({"event_id": "e", "msisdn": "0912345678"}, "type", 422),
    ({"event_id": "e", "type": "overdue"}, "msisdn", 422),
    ({"event_id": 5, "type": "overdue", "msisdn": "0912345678"}, "event_id", 400),
    ({"event_id": "e", "type": "overdue", "msisdn": 912345678}, "msisdn", 400),
    ({"event_id": "e", "type": "overdue", "msisdn": "0912345678", "data": []}, "data", 400),
    ({"event_id": "e", "type": "overdue", "msisdn": "0912345678", "to": "x"}, "to", 422),
])
def test_parse_event_refusals(body: dict[str, Any], field: str, status: int) -> None:
    with pytest.raises(IntakeError) as err:
        parse_event(body)
    assert (err.value.field, err.value.status) == (field, status)


@pytest.mark.parametrize("event_id", ["a", "billing:2026-11:84912345678", "X" * 128, "a.b_c-d"])
def test_good_event_ids(event_id: str) -> None:
    assert check_event_id(event_id) == event_id


@pytest.mark.parametrize("event_id", ["", "X" * 129, "a/b", "a b", "-a", "sự-kiện", "a?b"])
def test_bad_event_ids(event_id: str) -> None:
    with pytest.raises(IntakeError) as err:
        check_event_id(event_id)
    assert err.value.field == "event_id" and err.value.status == 422


# --- billing fields -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "key"), [
    ("11/2026", 202611), ("1/2027", 202701), ("2026-11", 202611), (" 12/2026 ", 202612),
])
def test_periods(raw: str, key: int) -> None:
    assert parse_period(raw) == (raw.strip(), key)


@pytest.mark.parametrize("raw", ["13/2026", "0/2026", "2026/11", "11-2026", "", 202611, None])
def test_bad_periods(raw: Any) -> None:
    with pytest.raises(IntakeError) as err:
        parse_period(raw)
    assert err.value.field == "data.period"


@pytest.mark.parametrize(("raw", "amount"), [
    (385000, 385000), ("385000", 385000), (385000.0, 385000), (-5000, -5000), (0, 0),
])
def test_amounts(raw: Any, amount: int) -> None:
    assert parse_amount(raw) == amount


@pytest.mark.parametrize("raw", ["385.000", "385000đ", 1.5, True, None, [1], 2**63, "9" * 20])
def test_bad_amounts(raw: Any) -> None:
    with pytest.raises(IntakeError) as err:
        parse_amount(raw)
    assert err.value.field == "data.amount"


def test_due_dates() -> None:
    assert parse_due_date("2026-12-20") == date(2026, 12, 20)
    assert parse_due_date("2026-12-20T23:59:00+07:00") == date(2026, 12, 20)
    for bad in ("20/12/2026", "2026-13-01", 20261220, None):
        with pytest.raises(IntakeError) as err:
            parse_due_date(bad)
        assert err.value.field == "data.due_date"


def test_bill_update_of_each_billing_type() -> None:
    data = {"period": "11/2026", "amount": 385000, "due_date": "2026-12-20"}
    for event_type, status in BILL_STATUS_OF_TYPE.items():
        update = bill_update(event_type, "e1", "84912345678", data, NOW)
        assert update == BillUpdate(msisdn="84912345678", status=status, amount=385000,
                                    event_id="e1", received_at=NOW, period="11/2026",
                                    period_key=202611, due_date=date(2026, 12, 20))
    assert BILL_STATUS_OF_TYPE["payment_received"] is BillStatus.PAID
    assert BILL_STATUS_OF_TYPE["suspended_two_way"] is BillStatus.OVERDUE


def test_bill_update_without_period_follows_the_known_bill() -> None:
    update = bill_update("payment_received", "e2", "84912345678",
                         {"amount": "385000", "paid_date": "2026-12-18"}, NOW)
    assert update is not None
    assert (update.period, update.period_key, update.due_date) == (None, None, None)


def test_no_bill_update_for_care_types_or_without_amount() -> None:
    assert bill_update("incident", "e", "84912345678", {"amount": 1}, NOW) is None
    assert bill_update("usage_high", "e", "84912345678", {"amount": 1}, NOW) is None
    assert bill_update("bill_issued", "e", "84912345678", {"period": "11/2026"}, NOW) is None


def test_bill_update_refuses_malformed_fields() -> None:
    with pytest.raises(IntakeError) as err:
        bill_update("bill_issued", "e", "84912345678", {"amount": 1, "period": "Nov"}, NOW)
    assert err.value.field == "data.period"
    with pytest.raises(ValueError, match="both period and period_key"):
        BillUpdate(msisdn="1", status=BillStatus.PAID, amount=1, event_id="e",
                   received_at=NOW, period="11/2026")


# --- the service refuses before storing anything --------------------------------------------


class _Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} must not be reached for a refused event")


def _offline_service() -> EventService:
    return EventService(cast(EventStore, _Untouchable()), cast(Intake, _Untouchable()))


@pytest.mark.parametrize(("args", "field", "needle"), [
    (("bad id", "overdue", "0912345678", {}), "event_id", "128 characters"),
    (("e", "birthday", "0912345678", {}), "type", "unknown event type 'birthday'"),
    (("e", "birthday", "0912345678", {}), "type", "bill_issued, payment_due"),
    (("e", "overdue", "09012", {}), "msisdn", "too short"),
    (("e", "overdue", "0912345678", {"msisdn": "0987654321"}), "data.msisdn", "differs"),
    (("e", "overdue", "0912345678", {"amount": "lots"}), "data.amount", "whole number"),
    (("e", "overdue", "0912345678", {"amount": 1, "due_date": "mai"}), "data.due_date", "ISO"),
])
async def test_service_refuses_before_storing(args: tuple[str, str, str, dict[str, Any]],
                                              field: str, needle: str) -> None:
    with pytest.raises(IntakeError) as err:
        await _offline_service().handle(*args, api_key_id=1)
    assert err.value.field == field and err.value.status == 422
    assert needle in err.value.reason


# --- response shapes ------------------------------------------------------------------------


def test_summary_and_detail_shapes() -> None:
    mid = uuid4()
    result = EventResult(event_id="e", type="overdue", msisdn="84912345678", message_id=mid,
                         status=MessageStatus.QUEUED, encoding=Encoding.UCS2, segments=3,
                         duplicate=False)
    assert event_summary(result) == {
        "event_id": "e", "type": "overdue", "message_id": str(mid), "status": "queued",
        "encoding": "ucs2", "segments": 3, "duplicate": False}
    row = EventRow(event_id="e", type="overdue", msisdn="84912345678", data={"amount": 1},
                   message_id=mid, received_at=NOW, api_key_id=1,
                   message=EventMessage(mid, MessageStatus.DELIVERED, Encoding.UCS2, 3, NOW))
    detail = event_detail(row)
    assert detail["message_status"] == "delivered" and detail["message_id"] == str(mid)
    assert detail["received_at"] == NOW.isoformat()
    pending = event_detail(EventRow(event_id="e", type="overdue", msisdn="84912345678",
                                    data={}, message_id=None, received_at=NOW, api_key_id=1))
    assert pending["message_id"] is None and pending["message_status"] is None
