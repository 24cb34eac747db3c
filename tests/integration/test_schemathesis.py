"""Schemathesis against a live gateway: every documented operation, bounded examples.

A real stack (gateway + SMSC simulator + Postgres + Redis) serves ``/openapi.json``; for each
operation Schemathesis generates valid (positive) and invalid (negative) requests from the
document, sends them with an API key holding every scope, and checks the answers:

* ``not_a_server_error`` — no 5xx, ever;
* ``status_code_conformance`` / ``content_type_conformance`` / ``response_headers_conformance``
  / ``response_schema_conformance`` — the answer is one the document describes;
* ``negative_data_rejection`` — a request the document calls invalid is refused with a 4xx.

Random ids only ever find nothing (404), so a message, an event, a subscriber, a survey and
a campaign (uploaded by another key, so that this one may approve it) are made first, and each
operation on ``/{id}`` gets a third, positive pass with the real id: the handlers' success
paths and their documented answer shapes are checked too.

The run is deterministic (a fixed seed, no example database) and bounded (``MAX_EXAMPLES`` per
operation and pass, no shrinking, no deadline). Schemathesis is synchronous (``requests``), so
it runs in a worker thread while the gateway serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.http.openapi import SCOPES
from gateway.store.apikeys import ApiKeyStore
from tests.integration.conftest import MakeStack, Stack, numbers

#: Examples per operation and pass (positive, negative, positive with a known id).
MAX_EXAMPLES = 20
SEED = 20261107
#: The whole fuzzing run must stay well inside the test's budget.
TIME_BUDGET_S = 75.0
CHECKS: list[Callable[..., Any]] = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_headers_conformance, response_schema_conformance, negative_data_rejection]


Failures = dict[tuple[str, str], str]


def fuzz_operation(operation: schemathesis.APIOperation, mode: GenerationMode, base: str,
                   http: requests.Session, failures: Failures,
                   path_parameters: dict[str, str] | None = None) -> int:
    """Send up to MAX_EXAMPLES generated requests; record each distinct failure; how many."""
    sent = 0
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
    label = f"{mode.value}{', known id' if path_parameters else ''}"

    @hypothesis.seed(SEED)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        response = case.call(base_url=base, session=http, timeout=10)
        sent += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as exc:  # one failure, or several
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            failures.setdefault((operation.label, first), (
                f"{operation.label} [{label}] -> {response.status_code}: {text}\n"
                f"  reproduce: {case.as_curl_command()}"))

    # Negative mode has no case for an operation with nothing to make invalid (no parameter,
    # no body): Hypothesis then says Unsatisfiable.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()
    return sent


def fuzz(base: str, key: str, known: dict[str, dict[str, str]]) -> tuple[list[str], int]:
    """Every operation in both modes, then with ``known`` path parameters (path template →
    values); (distinct failures, requests sent)."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    failures: Failures = {}
    sent = 0
    deadline = time.monotonic() + TIME_BUDGET_S
    for result in schema.get_all_operations():
        operation = result.ok()
        passes: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if operation.path in known:
            passes.append((GenerationMode.POSITIVE, known[operation.path]))
        for mode, path_parameters in passes:
            if time.monotonic() > deadline:
                failures[("time", "")] = f"stopped: time budget of {TIME_BUDGET_S} s spent"
                return sorted(failures.values()), sent
            sent += fuzz_operation(operation, mode, base, http, failures, path_parameters)
    return sorted(failures.values()), sent


async def make_resources(stack: Stack, key: str) -> dict[str, dict[str, str]]:
    """One of each resource the ``/{id}`` operations act on; path template → parameters."""
    assert stack.gw.pool is not None
    _, maker = await ApiKeyStore(stack.gw.pool).create("schemathesis-maker",
                                                       ("campaigns:write",), rate_per_s=0)
    to = numbers(1)[0]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:

        async def post(path: str, expect: int, **kw: Any) -> dict[str, Any]:
            async with http.post(f"{stack.base}{path}", **kw) as resp:
                body: dict[str, Any] = await resp.json()
                assert resp.status == expect, (path, resp.status, body)
                return body

        message = await post("/v1/messages", 202, json={"to": to, "text": "schemathesis"})
        await post("/v1/events", 202, json={
            "event_id": "schemathesis-1", "type": "incident", "msisdn": to,
            "data": {"service": "4G", "area": "Hà Nội", "started_at": "2026-12-05T08:30:00",
                     "eta": "2026-12-05T12:00:00"}})
        await post("/v1/subscribers/import", 200, data=f"msisdn,full_name\n{to},An\n",
                   headers={"Content-Type": "text/csv"})
        survey = await post("/v1/surveys", 201, json={
            "name": "schemathesis", "question": "Hài lòng?", "answers": ["Có", "Không"],
            "reply_window_s": 3600})
        form = aiohttp.FormData()
        form.add_field("file", f"msisdn\n{to}\n".encode(), filename="list.csv",
                       content_type="text/csv")
        for name, value in {"name": "schemathesis", "class": "care", "text": "Chào"}.items():
            form.add_field(name, value)
        campaign = await post("/v1/campaigns", 201, data=form,
                              headers={"Authorization": f"Bearer {maker}"})
    return {
        "/v1/messages/{id}": {"id": message["id"]},
        "/v1/events/{event_id}": {"event_id": "schemathesis-1"},
        "/v1/subscribers/{msisdn}": {"msisdn": to},
        **{f"/v1/surveys/{{id}}{tail}": {"id": survey["id"]}
           for tail in ("", "/send", "/results", "/close")},
        **{f"/v1/campaigns/{{id}}{tail}": {"id": campaign["id"]}
           for tail in ("", "/timeline", "/report.csv", "/approve", "/start", "/pause",
                        "/resume", "/cancel")},
    }


async def test_no_server_errors_and_answers_match_the_document(make_stack: MakeStack) -> None:
    stack = await make_stack()
    assert stack.gw.pool is not None
    _, key = await ApiKeyStore(stack.gw.pool).create("schemathesis", tuple(SCOPES),
                                                     rate_per_s=0)
    known = await make_resources(stack, key)
    started = time.monotonic()
    failures, sent = await asyncio.to_thread(fuzz, stack.base, key, known)
    took = time.monotonic() - started
    assert sent > 0
    assert not failures, f"{len(failures)} failure(s) in {sent} requests ({took:.0f} s):\n\n" \
                         + "\n\n".join(failures)


# --- what the fuzzing found, pinned ---------------------------------------------------------

_FORM = "multipart/form-data; boundary=x"


def _form(fields: dict[str, bytes], file: bytes = b"msisdn\n0901234567\n") -> bytes:
    parts = [b'--x\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
             % (name.encode(), value) for name, value in fields.items()]
    parts.append(b'--x\r\nContent-Disposition: form-data; name="file"; filename="l.csv"'
                 b"\r\n\r\n" + file + b"\r\n--x--\r\n")
    return b"".join(parts)


async def test_malformed_requests_are_4xx_not_500(make_stack: MakeStack) -> None:
    stack = await make_stack()
    assert stack.gw.pool is not None
    _, key = await ApiKeyStore(stack.gw.pool).create("robust", tuple(SCOPES), rate_per_s=0)
    uploads = ("/v1/subscribers/import", "/v1/campaigns", "/v1/dnc/import")
    bad_multipart = [
        ("multipart/form-data", _form({})),  # no boundary
        (_FORM, b"no boundary anywhere"),
        (_FORM, b'--x\r\nContent-Disposition: form-data; name="\xc3\x8b\x16"\r\n\r\n1\r\n'
                b"--x--\r\n"),  # a control character in a part header
        ("multipart/form-data; boundary=" + "y" * 80, _form({})),
    ]
    cases: list[tuple[str, str, str, bytes, int, str]] = [
        (path, "POST", ctype, body, 400, "body")
        for path in uploads for ctype, body in bad_multipart]
    cases += [
        ("/v1/campaigns", "POST", _FORM, b'--x\r\nContent-Disposition: form-data; name="file"'
                                         b"\r\n\r\ncut short", 400, "body"),
        ("/v1/dnc/import", "POST", _FORM, _form({}, file=b"PK\x03\x04 not a workbook"), 422,
         "file"),
        ("/v1/campaigns", "POST", _FORM, _form({"name": b"a\x00b", "text": b"hi"}), 422, "name"),
        ("/v1/dnc/import", "POST", _FORM, _form({"source": b"\x00"}), 422, "source"),
        ("/v1/messages", "POST", "application/json",
         b'{"to": "0901234567", "text": "a\\u0000b"}', 422, "text"),
        ("/v1/events", "POST", "application/json",
         b'{"event_id": "e1", "type": "incident", "msisdn": "0901234567", '
         b'"data": {"area": ["ok", "\\u0000"]}}', 422, "data.area[1]"),
        ("/v1/surveys", "POST", "application/json", b'{"name": "\\u0000"}', 422, "name"),
        ("/v1/templates/preview", "POST", "application/json", b"[" * 100_000, 400, "body"),
        ("/v1/events/a%00b", "GET", "", b"", 404, "event_id"),
    ]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        for path, method, ctype, body, status, field in cases:
            headers = {"Content-Type": ctype} if ctype else {}
            async with http.request(method, f"{stack.base}{path}", data=body or None,
                                    headers=headers) as resp:
                answer = await resp.json()
                assert (resp.status, answer["error"].get("field")) == (status, field), \
                    (path, ctype, body[:80], answer)
