"""The OpenAPI document (``GET /openapi.json``) against the routes of a running gateway.

Both directions: every route a real :class:`~gateway.service.Gateway` serves (less the
``/ui`` pages, their static files and the automatic HEAD routes) is documented with the scope
its handler declares, and every documented operation is a route. The document is also checked
against the OpenAPI 3.0 specification with ``openapi-spec-validator``.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_urldispatcher import StaticResource
from openapi_spec_validator import validate

from gateway.http import metrics as metrics_http
from gateway.http import openapi as openapi_http
from gateway.http.auth import declared_scope
from gateway.http.openapi import SCOPES, build_document
from gateway.metrics import Metrics
from gateway.store.apikeys import ApiKeyStore
from tests.integration.conftest import MakeStack

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def served_routes(app: web.Application) -> dict[tuple[str, str], Any]:
    """(method, path template) → handler of the API routes (no /ui, no static, no HEAD)."""
    out: dict[tuple[str, str], Any] = {}
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None or isinstance(resource, StaticResource):
            continue
        path = resource.canonical
        if path == "/ui" or path.startswith("/ui/"):
            continue
        out[(route.method, path)] = route.handler
    return out


def documented(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS}


def test_document_is_valid_openapi() -> None:
    for metrics_public in (True, False):
        validate(build_document(metrics_public=metrics_public))


def test_keyed_operations_document_auth_errors() -> None:
    for (method, path), op in documented(build_document()).items():
        scope = op["x-required-scope"]
        if scope is None:
            assert op["security"] == [], (method, path)
            assert "Public" in op["description"]
            continue
        for one in scope.split("|"):
            assert one in SCOPES, (method, path, scope)
            assert f"`{one}`" in op["description"], (method, path)
        assert {"401", "403", "429"} <= set(op["responses"]), (method, path)


async def test_document_matches_the_routes(make_stack: MakeStack) -> None:
    stack = await make_stack()
    runner = stack.gw._runner
    assert runner is not None
    routes = served_routes(runner.app)
    async with aiohttp.ClientSession() as anonymous, \
            anonymous.get(f"{stack.base}/openapi.json") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        document = await resp.json()
    assert document == build_document(metrics_public=stack.gw.config.http.metrics_public)
    ops = documented(document)

    assert sorted(set(routes) - set(ops)) == [], "routes missing from the OpenAPI document"
    assert sorted(set(ops) - set(routes)) == [], "documented operations that are no route"
    wrong = {key: (declared_scope(handler), ops[key]["x-required-scope"])
             for key, handler in routes.items()
             if declared_scope(handler) != ops[key]["x-required-scope"]}
    assert wrong == {}, "(handler's scope, documented scope) differ"
    assert any(r.canonical.startswith("/ui/") for r in runner.app.router.resources())
    assert not any(path.startswith("/ui") for path in document["paths"])


async def test_metrics_scope_follows_the_configuration() -> None:
    """With ``http.metrics_public = false`` the document says /metrics needs metrics:read."""
    for public in (True, False):
        app = web.Application()
        metrics_http.setup(app, metrics=Metrics(), public=public)
        openapi_http.setup(app)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/openapi.json")
            assert resp.status == 200
            document = await resp.json()
        scope = document["paths"]["/metrics"]["get"]["x-required-scope"]
        assert scope == (None if public else "metrics:read")


async def test_request_examples_are_accepted(make_stack: MakeStack) -> None:
    """Every JSON request example in the document works as it is (operations without path
    parameters: the examples name no id)."""
    stack = await make_stack()
    assert stack.gw.pool is not None
    _, key = await ApiKeyStore(stack.gw.pool).create("examples", tuple(SCOPES), rate_per_s=0)
    tried = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        for (method, path), op in documented(build_document()).items():
            example = op.get("requestBody", {}).get("content", {}) \
                .get("application/json", {}).get("example")
            if example is None or "{" in path:
                continue
            async with http.request(method, f"{stack.base}{path}", json=example) as resp:
                body = await resp.json()
                assert 200 <= resp.status < 300, (method, path, resp.status, body)
                assert str(resp.status) in op["responses"], (method, path, resp.status)
            tried.append(path)
    assert sorted(tried) == ["/v1/events", "/v1/messages", "/v1/surveys",
                             "/v1/templates/preview"]
