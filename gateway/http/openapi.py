"""``GET /openapi.json``: the OpenAPI 3.0.3 document of the HTTP API (public, no key).

The document is written here by hand, as plain dicts, next to the handlers it describes; it is
not derived from them. ``tests/integration/test_openapi.py`` keeps the two in step: every
route of a running gateway (less the ``/ui`` pages and their static files) must be in the
document with the scope its handler declares, and every documented operation must be a
route; ``tests/integration/test_schemathesis.py`` checks the answers against the schemas.

Every authenticated operation names the scope it needs in ``x-required-scope`` and in its
description; public operations have ``security: []`` and ``x-required-scope: null``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.http.auth import declared_scope
from gateway.http.auth import public as public_route
from gateway.http.openapi_schemas import (
    ANY_OBJECT,
    MESSAGE_CLASS,
    UUID_STRING,
    Schema,
    component_schemas,
    json_content,
    obj,
    ref,
    string,
)

OPENAPI_VERSION = "3.0.3"
PATH = "/openapi.json"

#: Every scope an API key can hold, with what it allows.
SCOPES: dict[str, str] = {
    "messages:send": "send SMS, read their status, list and preview templates",
    "events:write": "post and read billing and care events",
    "campaigns:write": "upload, start, pause, resume, cancel and read campaigns; surveys",
    "campaigns:approve": "approve a campaign uploaded by another key (maker-checker)",
    "subscribers:write": "import and read subscribers; import the Do-Not-Call list",
    "admin": "reload the keyword table",
    "metrics:read": "read /metrics when http.metrics_public = false",
}


_INFO_DESCRIPTION = """\
The HTTP API of smsgw, the SMS customer-care gateway.

Every `/v1` operation needs `Authorization: Bearer <key>` (create keys with
`smsgw apikey create --name NAME --scope SCOPE ...`); the scope an operation needs is in its
description and in `x-required-scope` (`a|b`: either scope will do). Each key has a request
rate limit: over it the answer is 429 with `Retry-After` (seconds).

Every 4xx and 5xx answer is JSON: `{"error": {"field": ..., "reason": ...}}` (`field` is left
out when no single field is to blame; a 500 carries only `request_id`, to look the failure up
in the gateway log). 400 means the request has the wrong shape (not JSON, a wrong JSON type,
a malformed multipart body), 422 a well-formed value that cannot be used (a text holding the
NUL character U+0000 is one: it can be neither stored nor sent).

Not described here: the campaign web pages under `/ui/` (HTML for people, no key, their data
comes from this API) and their static files under `/ui/static/`."""


# Errors: components/responses name → (status, description, schema).
_ERRORS: dict[str, tuple[int, str, str]] = {
    "BadRequest": (400, "The request has the wrong shape: not JSON, not an object, a value of "
                        "the wrong JSON type, a malformed multipart body.", "Error"),
    "Unauthorized": (401, "No API key, not `Bearer <key>`, or an unknown or revoked key.",
                     "Error"),
    "Forbidden": (403, "The API key lacks the scope this operation needs.", "Error"),
    "NotFound": (404, "No such resource (also for an id that cannot be one).", "Error"),
    "Conflict": (409, "The resource is in a state that does not allow this.", "Error"),
    "TooLarge": (413, "The request body is over the gateway's limit.", "Error"),
    "UnsupportedMediaType": (415, "The body's Content-Type is not one this operation takes.",
                             "Error"),
    "Unprocessable": (422, "A well-formed value that cannot be used; `field` says which.",
                      "Error"),
    "UploadRejected": (422, "The upload cannot be used (nothing was created); `field` names "
                            "the form field.", "UploadError"),
    "TooManyRequests": (429, "The API key is over its request rate limit.", "Error"),
}


def _error_responses() -> dict[str, Schema]:
    out: dict[str, Schema] = {
        name: {"description": text, "content": json_content(ref(schema))}
        for name, (_, text, schema) in _ERRORS.items()}
    out["TooManyRequests"]["headers"] = {"Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1}}}
    return out


def _op(op_id: str, tag: str, summary: str, *, scope: str | None, description: str = "",
        ok: dict[int, Schema], errors: tuple[str, ...] = (), body: Schema | None = None,
        params: list[Schema] | None = None) -> Schema:
    """One operation; ``scope`` None = public. Auth errors are added for keyed operations."""
    if scope is None:
        access = "Public: no API key."
    else:
        either = " or ".join(f"`{s}`" for s in scope.split("|"))
        access = f"Needs an API key with the scope {either}."
    op: Schema = {
        "operationId": op_id, "tags": [tag], "summary": summary,
        "description": f"{description}\n\n{access}".strip(),
        "x-required-scope": scope,
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    responses: dict[str, Schema] = {str(status): r for status, r in ok.items()}
    names = list(errors)
    if scope is not None:
        names += ["Unauthorized", "Forbidden", "TooManyRequests"]
    if body is not None and "TooLarge" not in names:
        names.append("TooLarge")
    for name in sorted(set(names), key=lambda n: _ERRORS[n][0]):
        responses[str(_ERRORS[name][0])] = {"$ref": f"#/components/responses/{name}"}
    op["responses"] = responses
    if scope is None:
        op["security"] = []
    return op


def _ok(description: str, schema: Schema | None = None, *,
        media: str = "application/json") -> Schema:
    out: Schema = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def _path_param(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema}


def _json_body(schema: Schema, example: dict[str, Any]) -> Schema:
    content = json_content(schema)
    content["application/json"]["example"] = example
    return {"required": True, "content": content}


def _multipart(fields: dict[str, Schema], description: str, *,
               file: str = "the list: CSV (UTF-8) or XLSX") -> Schema:
    """A ``multipart/form-data`` body with a binary ``file`` and text ``fields``."""
    schema = obj({"file": string(file, format="binary"), **fields}, ("file",))
    return {"required": True, "description": description,
            "content": {"multipart/form-data": {"schema": schema}}}


# --- paths ----------------------------------------------------------------------------------

_MESSAGE_ID = _path_param("id", "the message id from POST /v1/messages", UUID_STRING)
_SURVEY_ID = _path_param("id", "the survey id", UUID_STRING)
_CAMPAIGN_ID = _path_param("id", "the campaign id", UUID_STRING)
_CAMPAIGN_VIEW = {200: _ok("The campaign.", ref("Campaign"))}


def _message_paths() -> dict[str, Schema]:
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "like the body's idempotency_key (give one, or the same "
                                  "value in both)", "schema": string()}
    return {
        "/v1/messages": {"post": _op(
            "sendMessage", "messages", "Send one SMS", scope="messages:send",
            description="Text as it is, or a template with data. The message is stored, "
                        "then queued; its status moves on as the SMSC answers.",
            params=[idempotency], body=_json_body(ref("SendMessage"), {
                "to": "0901234567", "template": "bill_issued",
                "data": {"full_name": "Nguyễn Văn An", "msisdn": "0901234567",
                         "amount": 250000, "period": "11/2026", "due_date": "2026-12-05"}}),
            ok={202: _ok("Accepted and queued.", ref("MessageAccepted")),
                200: _ok("The idempotency key was used before: the first message, nothing "
                         "sent again.", ref("MessageAccepted"))},
            errors=("BadRequest", "Unprocessable"))},
        "/v1/messages/{id}": {"get": _op(
            "getMessage", "messages", "A message, its status and events",
            scope="messages:send",
            description="Only the API key that sent a message can read it (others get 404).",
            params=[_MESSAGE_ID], ok={200: _ok("The message.", ref("Message"))},
            errors=("NotFound",))},
    }


def _event_paths() -> dict[str, Schema]:
    return {
        "/v1/events": {"post": _op(
            "postEvent", "events", "Post a billing or care event", scope="events:write",
            description="One SMS per event_id however often it is posted; bill events "
                        "update the subscriber's latest bill.",
            body=_json_body(ref("PostEvent"), {
                "event_id": "billing:2026-11:84901234567", "type": "bill_issued",
                "msisdn": "0901234567",
                "data": {"full_name": "Nguyễn Văn An", "amount": 250000, "period": "11/2026",
                         "due_date": "2026-12-05"}}),
            ok={202: _ok("New: recorded and its SMS queued.", ref("EventAccepted")),
                200: _ok("Posted before: `duplicate: true` and the same message.",
                         ref("EventAccepted"))},
            errors=("BadRequest", "Conflict", "Unprocessable"))},
        "/v1/events/{event_id}": {"get": _op(
            "getEvent", "events", "An event and its message's status", scope="events:write",
            params=[_path_param("event_id", "the event id", string())],
            ok={200: _ok("The event.", ref("Event"))}, errors=("NotFound",))},
    }


def _template_paths() -> dict[str, Schema]:
    return {
        "/v1/templates": {"get": _op(
            "listTemplates", "templates", "The SMS programs (templates)",
            scope="messages:send", ok={200: _ok("The templates.", ref("TemplateList"))})},
        "/v1/templates/preview": {"post": _op(
            "previewTemplate", "templates", "Render a template without sending",
            scope="messages:send",
            description="A program by name (data defaults to its sample) or template text: "
                        "the text, encoding, segments, characters forcing UCS-2 and "
                        "warnings. Nothing is sent or stored.",
            body=_json_body(ref("PreviewRequest"), {"template": "birthday"}),
            ok={200: _ok("The rendered text.", ref("Preview"))},
            errors=("BadRequest", "Unprocessable"))},
    }


def _survey_paths() -> dict[str, Schema]:
    scope = "campaigns:write"
    survey = {200: _ok("The survey.", ref("Survey"))}
    return {
        "/v1/surveys": {"post": _op(
            "createSurvey", "surveys", "Create a survey", scope=scope,
            body=_json_body(ref("NewSurvey"), {
                "name": "CSAT 11/2026", "question": "Anh/chị hài lòng với dịch vụ không?",
                "answers": ["Có", "Không"], "reply_window_s": 86400}),
            ok={201: _ok("Created.", ref("Survey"))}, errors=("BadRequest", "Unprocessable"))},
        "/v1/surveys/{id}": {"get": _op(
            "getSurvey", "surveys", "A survey", scope=scope, params=[_SURVEY_ID], ok=survey,
            errors=("NotFound",))},
        "/v1/surveys/{id}/send": {"post": _op(
            "sendSurvey", "surveys", "Invite numbers, tiers or a segment", scope=scope,
            description="Sending again only invites numbers not invited yet; the first 1,000 "
                        "unusable numbers are listed.",
            params=[_SURVEY_ID],
            body=_json_body(ref("SendSurvey"), {"tiers": ["Vàng", "Kim cương"]}),
            ok={202: _ok("Invitations queued.", ref("SurveySent"))},
            errors=("BadRequest", "NotFound", "Conflict", "Unprocessable"))},
        "/v1/surveys/{id}/results": {"get": _op(
            "surveyResults", "surveys", "Counts per answer, response rate, comments",
            scope=scope, params=[_SURVEY_ID],
            ok={200: _ok("The results (numbers masked).", ref("SurveyResults"))},
            errors=("NotFound",))},
        "/v1/surveys/{id}/close": {"post": _op(
            "closeSurvey", "surveys", "Close a survey: no more replies are taken",
            scope=scope, params=[_SURVEY_ID], ok=survey, errors=("NotFound",))},
    }


def _subscriber_paths() -> dict[str, Schema]:
    scope = "subscribers:write"
    upload = _multipart({}, "The file as the `file` field of a form, or the file itself as "
                            "the body (text/csv, XLSX or application/octet-stream); its type "
                            "is recognised from its content.",
                        file="subscribers: CSV (UTF-8) or XLSX with a header row")
    binary = {"schema": string(format="binary")}
    upload["content"].update({
        "text/csv": binary, "application/octet-stream": binary,
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": binary})
    return {
        "/v1/subscribers/import": {"post": _op(
            "importSubscribers", "subscribers", "Import subscribers (CSV or XLSX)",
            scope=scope,
            description="Streamed and upserted by number; bad rows are reported (the first "
                        "1,000, with line, column, value and reason) while good rows go in.",
            body=upload, ok={200: _ok("The import report.", ref("ImportReport"))},
            errors=("BadRequest", "TooLarge", "UnsupportedMediaType", "Unprocessable"))},
        "/v1/subscribers/{msisdn}": {"get": _op(
            "getSubscriber", "subscribers", "A subscriber", scope=scope,
            params=[_path_param("msisdn", "the number, written any usual way (0901..., "
                                          "84901..., +84...)", string())],
            ok={200: _ok("The subscriber.", ref("Subscriber"))},
            errors=("NotFound", "Unprocessable"))},
        "/v1/dnc/import": {"post": _op(
            "importDnc", "subscribers", "Add numbers to the Do-Not-Call list", scope=scope,
            body=_multipart({
                "source": string("where the list comes from (default: the file name)"),
                "channels": string("which channels the numbers refuse (default all)",
                                   enum=["all", "sms", "voice"]),
            }, "A CSV or XLSX of numbers as the `file` field."),
            ok={200: _ok("The import report.", ref("DncReport"))},
            errors=("BadRequest", "TooLarge", "UploadRejected"))},
    }


def _campaign_action(action: str, summary: str, scope: str, description: str) -> Schema:
    errors = ("NotFound", "Conflict")
    return {"post": _op(f"{action}Campaign", "campaigns", summary, scope=scope,
                        description=description, params=[_CAMPAIGN_ID], ok=_CAMPAIGN_VIEW,
                        errors=errors)}


def _campaign_paths() -> dict[str, Schema]:
    scope, read = "campaigns:write", "campaigns:write|campaigns:approve"
    upload = _multipart({
        "name": string("the campaign's name"),
        "template": string("a program name (give template or text)"),
        "text": string("the message's template text (give template or text)"),
        "class": MESSAGE_CLASS, "sender": string("default: the gateway's"),
        "advertiser": string("whom the advertising cap counts against (default: the sender)"),
        "schedule_at": string("ISO 8601; without an offset, local time"),
        "msisdn_column": string("the column holding the numbers (default: recognised)"),
        "mapping": string('JSON object {"variable": "column name"}'),
        "encoding": string("of a CSV file", enum=["utf-8", "cp1258"]),
        "khong_dau": string("send without diacritics: 1, true, yes or on"),
    }, "The list as the `file` field (CSV or XLSX) and the campaign's settings.")
    return {
        "/v1/campaigns": {
            "post": _op(
                "uploadCampaign", "campaigns", "Upload a campaign (a list and a message)",
                scope=scope,
                description="The list is validated (numbers, duplicates, Do-Not-Call, "
                            "rendering); the campaign is created as a draft with its "
                            "validation report, samples and estimate. Nothing is sent until "
                            "another key approves it and it is started.",
                body=upload, ok={201: _ok("Created (a draft).", ref("Campaign"))},
                errors=("BadRequest", "TooLarge", "UploadRejected")),
            "get": _op("listCampaigns", "campaigns", "Recent campaigns with progress",
                       scope=read, ok={200: _ok("The campaigns.", ref("CampaignList"))}),
        },
        "/v1/campaigns/{id}": {"get": _op(
            "getCampaign", "campaigns", "A campaign: report, samples, estimate, progress",
            scope=read, params=[_CAMPAIGN_ID], ok=_CAMPAIGN_VIEW, errors=("NotFound",))},
        "/v1/campaigns/{id}/timeline": {"get": _op(
            "campaignTimeline", "campaigns", "Delivered and failed over time", scope=read,
            params=[_CAMPAIGN_ID], ok={200: _ok("Cumulative counts.", ref("Timeline"))},
            errors=("NotFound",))},
        "/v1/campaigns/{id}/report.csv": {"get": _op(
            "campaignReport", "campaigns", "The per-recipient report as CSV", scope=read,
            params=[_CAMPAIGN_ID, {
                "name": "masked", "in": "query", "required": False,
                "description": "mask the numbers (1, true, yes or on); default: the "
                               "gateway's campaigns.report_masked", "schema": string()}],
            ok={200: _ok("One line per recipient, then the rows not sent, then a summary.",
                         string(), media="text/csv")},
            errors=("NotFound",))},
        "/v1/campaigns/{id}/approve": _campaign_action(
            "approve", "Approve a draft", "campaigns:approve",
            "Maker-checker: the key that uploaded the campaign cannot approve it (403)."),
        "/v1/campaigns/{id}/start": _campaign_action(
            "start", "Start an approved campaign", scope,
            "Runs now, or at its schedule_at (status scheduled)."),
        "/v1/campaigns/{id}/pause": _campaign_action(
            "pause", "Pause a running or scheduled campaign", scope,
            "Queued messages are held."),
        "/v1/campaigns/{id}/resume": _campaign_action(
            "resume", "Resume a paused campaign", scope, ""),
        "/v1/campaigns/{id}/cancel": _campaign_action(
            "cancel", "Cancel a campaign", scope, "Messages not yet sent are cancelled."),
    }


def _operations_paths(metrics_public: bool) -> dict[str, Schema]:
    return {
        "/v1/admin/keywords/reload": {"post": _op(
            "reloadKeywords", "admin", "Re-read the keyword table (keywords.toml)",
            scope="admin",
            description="An invalid table is refused (422) and the one loaded before stays "
                        "in use.",
            ok={200: _ok("Reloaded.", ref("KeywordsReloaded"))}, errors=("Unprocessable",))},
        "/healthz": {"get": _op(
            "health", "operations", "Health of the SMPP links, Postgres and Redis",
            scope=None,
            ok={200: _ok("Everything is up.", ref("Health")),
                503: _ok("Something is down (messages are still accepted when only SMPP is; "
                         "they wait in the queue).", ref("Health"))})},
        "/metrics": {"get": _op(
            "metrics", "operations", "Prometheus metrics (text format 0.0.4)",
            scope=None if metrics_public else "metrics:read",
            description="Counts only, never message content or numbers. Public unless the "
                        "gateway runs with `http.metrics_public = false`, then it needs the "
                        "scope `metrics:read`.",
            ok={200: _ok("The metrics.", string(), media="text/plain")})},
        PATH: {"get": _op(
            "openapi", "operations", "This document", scope=None,
            ok={200: _ok("The OpenAPI document.", ANY_OBJECT)})},
    }


# --- the document ---------------------------------------------------------------------------


def build_document(*, metrics_public: bool = True) -> dict[str, Any]:
    """The OpenAPI document; ``metrics_public`` as in ``[http] metrics_public``."""
    scopes = "\n".join(f"* `{name}`: {text}" for name, text in SCOPES.items())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "smsgw HTTP API", "version": "1",
                 "description": f"{_INFO_DESCRIPTION}\n\nScopes:\n\n{scopes}"},
        "tags": [{"name": name} for name in (
            "messages", "events", "templates", "surveys", "subscribers", "campaigns", "admin",
            "operations")],
        "security": [{"bearerAuth": []}],
        "paths": {**_message_paths(), **_event_paths(), **_template_paths(),
                  **_survey_paths(), **_subscriber_paths(), **_campaign_paths(),
                  **_operations_paths(metrics_public)},
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "An API key from `smsgw apikey create`."}},
            "schemas": component_schemas(),
            "responses": _error_responses(),
        },
    }


class _Document:
    """The document as JSON bytes, built at the first request (once every route is added,
    so ``/metrics`` is described as this gateway serves it)."""

    def __init__(self) -> None:
        self.body: bytes | None = None


DOCUMENT: web.AppKey[_Document] = web.AppKey("openapi_document", _Document)


def _metrics_public(app: web.Application) -> bool:
    for route in app.router.routes():
        if route.method == "GET" and route.resource is not None \
                and route.resource.canonical == "/metrics":
            return declared_scope(route.handler) is None
    return True


@public_route
async def get_openapi(request: web.Request) -> web.Response:
    holder = request.app[DOCUMENT]
    if holder.body is None:
        document = build_document(metrics_public=_metrics_public(request.app))
        holder.body = json.dumps(document, ensure_ascii=False).encode()
    return web.Response(body=holder.body, content_type="application/json",
                        headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    """Add ``GET /openapi.json`` (an ``extensions`` entry of ``create_app``)."""
    app[DOCUMENT] = _Document()
    app.router.add_get(PATH, get_openapi)
