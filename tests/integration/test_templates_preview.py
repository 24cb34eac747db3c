"""``GET /v1/templates`` and ``POST /v1/templates/preview`` with the real templates and keys."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import PROJECT_ROOT
from gateway.config import SendingConfig
from gateway.http import templates as templates_http
from gateway.http.app import create_app
from gateway.intake import Intake
from gateway.store.apikeys import ApiKeyStore
from gateway.store.messages import MessageStore
from gateway.templating import TemplateRenderer, template_defaults

SEND = "messages:send"


@dataclass
class Api:
    client: TestClient[Any, Any]
    renderer: TemplateRenderer
    apikeys: ApiKeyStore
    key: str

    async def preview(self, body: Any, *, key: str | None = None) -> tuple[int, Any]:
        resp = await self.client.post("/v1/templates/preview", json=body,
                                      headers={"Authorization": f"Bearer {key or self.key}"})
        return resp.status, await resp.json()


@pytest.fixture
async def api(pg_pool: asyncpg.Pool) -> AsyncIterator[Api]:
    renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms",
                                defaults=template_defaults(SendingConfig()))
    messages = MessageStore(pg_pool)
    apikeys = ApiKeyStore(pg_pool)
    intake = Intake(store=messages, queue=None, renderer=renderer, sending=SendingConfig())

    async def health() -> dict[str, Any]:
        return {}

    app = create_app(intake=intake, store=messages, apikeys=apikeys, health=health,
                     extensions=[functools.partial(templates_http.setup, renderer=renderer)])
    _, key = await apikeys.create(f"tpl-{uuid.uuid4().hex[:10]}", [SEND])
    async with TestClient(TestServer(app)) as client:
        yield Api(client, renderer, apikeys, key)


async def test_list_templates(api: Api) -> None:
    resp = await api.client.get("/v1/templates", headers={"Authorization": f"Bearer {api.key}"})
    assert resp.status == 200
    items = (await resp.json())["templates"]
    assert [t["name"] for t in items] == api.renderer.names()
    birthday = next(t for t in items if t["name"] == "birthday")
    assert birthday["class"] == "care" and birthday["sender"] == "CSKH"
    assert birthday["max_segments"] == 3 and birthday["description"]
    assert next(t for t in items if t["name"] == "promotion")["class"] == "advertising"


async def test_every_template_previews_with_its_sample(api: Api) -> None:
    names = api.renderer.names()
    assert len(names) >= 10
    for name in names:
        status, body = await api.preview({"template": name})
        assert status == 200, (name, body)
        meta = api.renderer.meta(name)
        expected = api.renderer.render(name, meta.sample)
        assert body["text"] == expected.text and body["text"], name
        assert (body["template"], body["class"], body["sender"], body["max_segments"]) == (
            name, meta.message_class.value, meta.sender, meta.max_segments)
        assert body["encoding"] in ("gsm7", "ucs2")
        assert 1 <= body["segments"] <= meta.max_segments, name
        assert body["warnings"] == [], (name, body["warnings"])


async def test_preview_with_own_data_and_khong_dau(api: Api) -> None:
    data = {"full_name": "Trần Văn Đức", "tier": "Kim cương", "points": 30000}
    status, body = await api.preview({"template": "birthday", "data": data})
    assert status == 200 and "Đức" in body["text"] and body["encoding"] == "ucs2"
    assert body["ucs2_chars"]
    status, plain = await api.preview({"template": "birthday", "data": data, "khong_dau": True})
    assert status == 200 and "Duc" in plain["text"] and plain["khong_dau"] is True
    assert plain["encoding"] == "gsm7" and plain["segments"] <= body["segments"]


async def test_template_with_missing_data_names_the_variable(api: Api) -> None:
    status, body = await api.preview({"template": "bill_issued", "data": {"full_name": "An"}})
    assert status == 422
    assert body["error"]["field"] == "data"
    assert "needs variable" in body["error"]["reason"]
    assert "'bill_issued'" in body["error"]["reason"]


async def test_source_with_a_missing_variable_is_422_naming_it(api: Api) -> None:
    status, body = await api.preview({"source": "Chào {{ ho_ten }}, mã của bạn là {{ ma }}",
                                      "data": {"ho_ten": "Mai"}})
    assert status == 422
    assert body["error"] == {"field": "data",
                             "reason": "inline template needs variable 'ma'"}


async def test_source_renders_with_filters_and_defaults(api: Api) -> None:
    status, body = await api.preview({"source": "Cuoc {{ amount | vnd }}. Ho tro {{ hotline }}",
                                      "data": {"amount": 125000}})
    assert status == 200
    assert body["text"] == "Cuoc 125.000đ. Ho tro 18001090"
    assert (body["class"], body["max_segments"], body["warnings"]) == ("care", None, [])


async def test_advertising_source_without_qc_is_200_with_warnings(api: Api) -> None:
    status, body = await api.preview({"source": "Goi {{ goi }} chi 90k/thang", "class":
                                      "advertising", "data": {"goi": "MAX90"}})
    assert status == 200
    assert body["class"] == "advertising" and body["text"] == "Goi MAX90 chi 90k/thang"
    assert any("[QC]" in w for w in body["warnings"])
    assert any("refusal" in w for w in body["warnings"])
    status, body = await api.preview({"source": "[QC] Goi MAX90. {{ refusal }}",
                                      "class": "advertising"})
    assert status == 200 and body["warnings"] == []


async def test_source_over_max_segments_warns(api: Api) -> None:
    status, body = await api.preview({"source": "x" * 200, "max_segments": 1})
    assert status == 200
    assert body["segments"] == 2 and body["max_segments"] == 1
    assert "over max_segments = 1" in body["warnings"][0]


async def test_source_syntax_error_blames_the_source(api: Api) -> None:
    status, body = await api.preview({"source": "Chao {{ ten "})
    assert status == 422
    assert body["error"]["field"] == "source" and "syntax error" in body["error"]["reason"]
    status, body = await api.preview({"source": "{{ ''.__class__ }}"})
    assert status == 422 and body["error"]["field"] == "source"


async def test_unknown_template_is_422_listing_the_known(api: Api) -> None:
    status, body = await api.preview({"template": "sinh_nhat"})
    assert status == 422
    assert body["error"]["field"] == "template"
    assert "'sinh_nhat' is unknown" in body["error"]["reason"]
    assert "birthday" in body["error"]["reason"] and "promotion" in body["error"]["reason"]


@pytest.mark.parametrize(("body", "status", "field"), [
    ({}, 422, "template"),
    ({"template": "birthday", "source": "x"}, 422, "template"),
    ({"template": "birthday", "class": "care"}, 422, "class"),
    ({"source": "x", "class": "spam"}, 422, "class"),
    ({"source": "x", "max_segments": 0}, 422, "max_segments"),
    ({"template": 5}, 400, "template"),
    ({"template": "birthday", "data": [1]}, 400, "data"),
    ({"template": "birthday", "khong_dau": "yes"}, 400, "khong_dau"),
    ({"template": "birthday", "to": "0901234567"}, 422, "to"),
    ({"source": "x" * 10_001}, 422, "source"),
])
async def test_bad_requests(api: Api, body: dict[str, Any], status: int, field: str) -> None:
    got, answer = await api.preview(body)
    assert got == status, answer
    assert answer["error"]["field"] == field


async def test_preview_needs_a_key_with_messages_send(api: Api) -> None:
    resp = await api.client.post("/v1/templates/preview", json={"template": "birthday"})
    assert resp.status == 401
    _, other = await api.apikeys.create(f"tpl-{uuid.uuid4().hex[:10]}", ["subscribers:write"])
    status, body = await api.preview({"template": "birthday"}, key=other)
    assert status == 403 and SEND in body["error"]["reason"]
    resp = await api.client.get("/v1/templates")
    assert resp.status == 401
