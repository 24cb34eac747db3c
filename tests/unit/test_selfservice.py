"""Self-service requests: references, webhook signatures, classification, address parsing."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from gateway import PROJECT_ROOT
from gateway.actions import MoContext
from gateway.actions.selfservice import (
    ADDRESS_HELP,
    CONFIRM_ACTION_NAME,
    DESTRUCTIVE,
    KEYWORDS,
    LABELS,
    MAX_ADDRESS_CHARS,
    ConfirmAction,
    ServiceRequestAction,
    build_actions,
    is_destructive,
    parse_address,
)
from gateway.config import ConfigError, WebhookConfig
from gateway.store.service_requests import (
    REFERENCE_ALPHABET,
    REFERENCE_RE,
    RequestKind,
    RequestStatus,
    ServiceRequest,
    ServiceRequestStore,
    new_reference,
    normalise_reference,
)
from gateway.templating import DEFAULT_TEMPLATES_DIR, TemplateRenderer
from gateway.webhooks import (
    REFERENCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    encode_body,
    request_payload,
    sign,
    signed_headers,
    verify,
)

SECRET = "s3cret-shared-with-the-back-office"
T0 = 1_800_000_000


# --------------------------------------------------------------------------- references


def test_reference_format() -> None:
    refs = {new_reference() for _ in range(2000)}
    assert len(refs) == 2000
    for ref in refs:
        assert len(ref) == 10 and ref.startswith("YC")
        assert REFERENCE_RE.fullmatch(ref)
        assert set(ref[2:]) <= set(REFERENCE_ALPHABET)


def test_reference_alphabet_has_no_look_alikes() -> None:
    assert not set("0O1IL2Z5S8B") & set(REFERENCE_ALPHABET)
    assert len(set(REFERENCE_ALPHABET)) == len(REFERENCE_ALPHABET)
    assert REFERENCE_ALPHABET.isupper() or REFERENCE_ALPHABET.isdigit()


def test_reference_check_in_sql_matches_python() -> None:
    sql = (PROJECT_ROOT / "sql" / "0010_service_requests.sql").read_text(encoding="utf-8")
    assert f"'^YC[{REFERENCE_ALPHABET}]{{8}}$'" in sql


@pytest.mark.parametrize(("typed", "expected"), [
    ("YC7KQ4MXTA", "YC7KQ4MXTA"),
    ("yc7kq4mxta", "YC7KQ4MXTA"),
    (" YC 7KQ4-MXTA ", "YC7KQ4MXTA"),
    ("YC7KQ4MXT", None),  # too short
    ("YC7KQ4MXTA1", None),  # too long
    ("YC0KQ4MXTA", None),  # 0 is not in the alphabet
    ("XX7KQ4MXTA", None),
    ("", None),
])
def test_normalise_reference(typed: str, expected: str | None) -> None:
    assert normalise_reference(typed) == expected


# --------------------------------------------------------------------------- signatures


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"reference":"YC7KQ4MXTA"}'
    expected = hmac.new(SECRET.encode(), b"1800000000." + body, hashlib.sha256).hexdigest()
    assert sign(body, SECRET, T0) == expected
    assert sign(body, SECRET, str(T0)) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


def _headers(body: bytes, secret: str = SECRET, ts: int = T0) -> dict[str, str]:
    return signed_headers(body, secret, reference="YC7KQ4MXTA", timestamp=ts)


def test_signed_headers() -> None:
    body = b"{}"
    headers = _headers(body)
    assert headers[TIMESTAMP_HEADER] == str(T0)
    assert headers[SIGNATURE_HEADER] == "sha256=" + sign(body, SECRET, T0)
    assert headers[REFERENCE_HEADER] == "YC7KQ4MXTA"
    assert headers["Content-Type"].startswith("application/json")


def test_verify_accepts_a_fresh_signature() -> None:
    body = '{"address":"12 Lê Lợi"}'.encode()
    assert verify(body, _headers(body), SECRET, now=T0)
    assert verify(body, _headers(body), SECRET, now=T0 + 299)
    assert verify(body, _headers(body), SECRET, now=T0 - 299)  # a sender clock a bit ahead


def test_verify_rejects_wrong_secret() -> None:
    body = b"{}"
    assert not verify(body, _headers(body, secret="other"), SECRET, now=T0)
    assert not verify(body, _headers(body), "other", now=T0)
    assert not verify(body, _headers(body), "", now=T0)


def test_verify_rejects_stale_or_future_timestamp() -> None:
    body = b"{}"
    assert not verify(body, _headers(body), SECRET, now=T0 + 301)
    assert not verify(body, _headers(body), SECRET, now=T0 - 301)
    assert verify(body, _headers(body), SECRET, now=T0 + 500, max_age_s=600)


def test_verify_rejects_tampered_body_or_timestamp() -> None:
    body = b'{"type":"reconnect"}'
    headers = _headers(body)
    assert not verify(b'{"type":"suspend"}', headers, SECRET, now=T0)
    moved = {**headers, TIMESTAMP_HEADER: str(T0 + 1)}
    assert not verify(body, moved, SECRET, now=T0)


@pytest.mark.parametrize("change", [
    {SIGNATURE_HEADER: None},
    {TIMESTAMP_HEADER: None},
    {TIMESTAMP_HEADER: "soon"},
    {TIMESTAMP_HEADER: "-1800000000"},
    {TIMESTAMP_HEADER: "\u0661\u0668\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660"},
    {SIGNATURE_HEADER: "md5=abc"},
    {SIGNATURE_HEADER: "sha256="},
    {SIGNATURE_HEADER: "sha256=é"},
])
def test_verify_rejects_malformed_headers(change: dict[str, str | None]) -> None:
    body = b"{}"
    headers: dict[str, str] = dict(_headers(body))
    for key, value in change.items():
        if value is None:
            del headers[key]
        else:
            headers[key] = value
    assert not verify(body, headers, SECRET, now=T0)


def test_verify_header_names_are_case_insensitive() -> None:
    body = b"{}"
    lower = {k.lower(): v for k, v in _headers(body).items()}
    assert verify(body, lower, SECRET, now=T0)
    upper_hex = {**_headers(body)}
    upper_hex[SIGNATURE_HEADER] = "sha256=" + sign(body, SECRET, T0).upper()
    assert verify(body, upper_hex, SECRET, now=T0)


# --------------------------------------------------------------------------- webhook config


def test_webhook_config_defaults_mean_not_configured() -> None:
    cfg = WebhookConfig()
    assert not cfg.configured and cfg.timeout_s == 5 and cfg.max_attempts == 8
    assert WebhookConfig(url="https://bo.example/requests", secret="x").configured


@pytest.mark.parametrize("kwargs", [
    {"url": "https://bo.example/requests"},  # no secret
    {"url": "ftp://bo.example/requests", "secret": "x"},
    {"url": "bo.example/requests", "secret": "x"},
    {"max_attempts": 0},
    {"max_attempts": 51},
    {"timeout_s": 0},
    {"retry_base_s": -1},
])
def test_webhook_config_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        WebhookConfig(**kwargs)


def test_retry_delay_doubles_up_to_300s() -> None:
    cfg = WebhookConfig()
    assert [cfg.retry_delay_s(n) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert cfg.retry_delay_s(1000) == 300
    fast = WebhookConfig(retry_base_s=0.01, retry_max_s=0.05)
    assert fast.retry_delay_s(1) == 0.02 and fast.retry_delay_s(5) == 0.05


# --------------------------------------------------------------------------- classification


def test_destructive_classification() -> None:
    expected = {RequestKind.SUSPEND, RequestKind.SIM_SWAP, RequestKind.TO_POSTPAID,
                RequestKind.TO_PREPAID}
    assert set(DESTRUCTIVE) == expected
    assert not is_destructive("reconnect") and not is_destructive(RequestKind.CHANGE_ADDRESS)
    assert is_destructive("sim_swap")
    with pytest.raises(ValueError):
        is_destructive("bogus")


def test_keywords_and_actions() -> None:
    actions = build_actions(cast(ServiceRequestStore, object()), _never_enqueue)
    assert set(KEYWORDS.values()) == set(actions)
    assert KEYWORDS["TAM NGUNG"] == "suspend" and KEYWORDS["MO LAI"] == "reconnect"
    assert KEYWORDS["DOI SIM"] == "sim_swap" and KEYWORDS["DOI DIA CHI"] == "change_address"
    assert KEYWORDS["CHUYEN TRA SAU"] == "to_postpaid"
    assert KEYWORDS["CHUYEN TRA TRUOC"] == "to_prepaid"
    assert isinstance(actions[CONFIRM_ACTION_NAME], ConfirmAction)
    for kind in RequestKind:
        action = actions[kind.value]
        assert isinstance(action, ServiceRequestAction)
        assert action.kind is kind and action.destructive == (kind in DESTRUCTIVE)
        assert action.confirm_window_s == 600
    assert set(LABELS) == set(RequestKind)


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(("args", "expected"), [
    (["12", "Lê", "Lợi,", "Q.1,", "TP.HCM"], "12 Lê Lợi, Q.1, TP.HCM"),
    ([":", "12", "Lê", "Lợi"], "12 Lê Lợi"),
    (["-12", "Lê", "Lợi"], "12 Lê Lợi"),
    (["12\tLe\x00Loi\n", " Hue "], "12 Le Loi Hue"),
    (["So", "5", "ngo", "10/2"], "So 5 ngo 10/2"),
    (["Le\u0302\u0300"], "Lề"),  # decomposed → NFC
    ([], None),
    (["", "  "], None),
    ([":", "-"], None),
    (["x" * (MAX_ADDRESS_CHARS + 1)], None),
])
def test_parse_address(args: list[str], expected: str | None) -> None:
    assert parse_address(args) == expected


def test_parse_address_at_the_limit() -> None:
    assert parse_address(["x" * MAX_ADDRESS_CHARS]) == "x" * MAX_ADDRESS_CHARS


async def _never_enqueue(request_id: int) -> None:
    raise AssertionError("nothing may be enqueued")


class _NoStore:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store must not be used ({name})")


async def test_change_address_without_address_asks_for_the_format() -> None:
    action = ServiceRequestAction("change_address", cast(ServiceRequestStore, _NoStore()),
                                  _never_enqueue, destructive=False)
    ctx = MoContext(inbound_id=uuid.uuid4(), msisdn="84912345678", destination="1234",
                    text="DOI DIA CHI", received_at=datetime.now(UTC), link="sim",
                    keyword="DOI DIA CHI", args=())
    result = await action(ctx)
    assert result.handled and result.reply_template is None
    assert result.reply_text == ADDRESS_HELP.format(shortcode="1234")
    assert "DOI DIA CHI" in result.reply_text and "1234" in result.reply_text


def test_action_rejects_bad_window() -> None:
    with pytest.raises(ValueError):
        ServiceRequestAction("suspend", cast(ServiceRequestStore, _NoStore()), _never_enqueue,
                             destructive=True, confirm_window_s=0)


# --------------------------------------------------------------------------- payload, templates


def _request(**over: Any) -> ServiceRequest:
    at = datetime(2026, 11, 20, 7, 5, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": 7, "reference": "YC7KQ4MXTA", "kind": RequestKind.CHANGE_ADDRESS,
        "msisdn": "84912345678", "args": {"address": "12 Lê Lợi"},
        "status": RequestStatus.CONFIRMED, "inbound_id": uuid.UUID(int=1), "confirm_by": None,
        "requested_at": at, "created_at": at, "confirmed_at": at, "posted_at": None,
        "attempts": 0, "last_error": None,
    }
    values.update(over)
    return ServiceRequest(**values)


def test_payload() -> None:
    body = encode_body(_request())
    decoded = json.loads(body)
    assert decoded == request_payload(_request())
    assert decoded == {
        "reference": "YC7KQ4MXTA", "type": "change_address", "msisdn": "84912345678",
        "args": {"address": "12 Lê Lợi"}, "status": "confirmed",
        "inbound_id": "00000000-0000-0000-0000-000000000001",
        "requested_at": "2026-11-20T07:05:00+00:00", "confirmed_at": "2026-11-20T07:05:00+00:00",
    }
    assert "Lê Lợi".encode() in body  # UTF-8, not \u escapes
    assert body == encode_body(_request())  # deterministic (keys sorted)
    assert json.loads(encode_body(_request(inbound_id=None)))["inbound_id"] is None


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(DEFAULT_TEMPLATES_DIR)


@pytest.mark.parametrize("name", ["keyword_request", "keyword_confirm",
                                  "keyword_confirm_expired"])
def test_templates_render_their_sample(renderer: TemplateRenderer, name: str) -> None:
    meta = renderer.meta(name)
    assert meta.message_class.value == "care" and meta.description
    assert REFERENCE_RE.fullmatch(meta.sample["reference"])
    for label in LABELS.values():
        data = {**meta.sample, "request_name": label, "shortcode": "123456"}
        for khong_dau in (False, True):
            out = renderer.render(name, data, khong_dau=khong_dau)
            assert out.warnings == () and out.segments <= meta.max_segments
            assert meta.sample["reference"] in out.text


def test_confirm_template_says_y_and_the_window(renderer: TemplateRenderer) -> None:
    text = renderer.render("keyword_confirm", renderer.meta("keyword_confirm").sample).text
    assert "Y gửi 1234" in text and "10 phút" in text and "xác nhận" in text


def test_expired_template_without_reference(renderer: TemplateRenderer) -> None:
    out = renderer.render("keyword_confirm_expired", {"reference": "", "hotline": "18001090"})
    assert out.warnings == () and "Không có yêu cầu" in out.text and "YC" not in out.text
