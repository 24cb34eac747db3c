"""Survey endpoints (scope ``campaigns:write``).

* ``POST /v1/surveys`` ``{name, question, answers, reply_window_s, template?}`` -> 201 with
  the survey;
* ``GET /v1/surveys/{id}`` -> the survey;
* ``POST /v1/surveys/{id}/send`` ``{tiers?, segment?, msisdns?, data?}`` -> 202 with
  ``{invited, already_invited, rejected: [{value, reason}], rejected_total}`` (the first 1,000
  rejected numbers are listed); sending again only invites numbers not invited yet;
* ``GET /v1/surveys/{id}/results`` -> counts per answer, response rate and comments (numbers
  masked);
* ``POST /v1/surveys/{id}/close`` -> the survey, which takes no more replies.

An unknown or malformed survey id is 404; 409 for sending a closed survey.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from aiohttp import web

from gateway.http.auth import API_KEY, requires_scope
from gateway.http.schemas import decode_json_object, error_response, json_type
from gateway.intake import IntakeError
from gateway.store.surveys import DEFAULT_TEMPLATE, Survey, SurveyResults
from gateway.surveys import SendReport, SurveyService

log = logging.getLogger("smsgw.http.surveys")

#: Scope an API key needs for surveys.
SCOPE_CAMPAIGNS = "campaigns:write"
CREATE_FIELDS = ("name", "question", "answers", "reply_window_s", "template")
SEND_FIELDS = ("tiers", "segment", "msisdns", "data")
MAX_REJECTED_SHOWN = 1_000

SURVEY_SERVICE: web.AppKey[SurveyService] = web.AppKey("survey_service", SurveyService)


# --- parsing --------------------------------------------------------------------------------


def _only(body: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(fields))
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise IntakeError(unknown[0], f"unknown field(s) {names}; the accepted fields are "
                                      f"{', '.join(fields)}")


def _str(body: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    if name not in body or body[name] is None:
        if required:
            raise IntakeError(name, "is required")
        return None
    value = body[name]
    if not isinstance(value, str):
        raise IntakeError(name, f"must be a string, not {json_type(value)}", status=400)
    return value


def _str_list(body: Mapping[str, Any], name: str, *, required: bool) -> list[str] | None:
    if name not in body or body[name] is None:
        if required:
            raise IntakeError(name, "is required")
        return None
    value = body[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IntakeError(name, f"must be an array of strings, not {json_type(value)}",
                          status=400)
    return value


def _survey_id(request: web.Request) -> UUID:
    raw = request.match_info["id"]
    try:
        return UUID(raw)
    except ValueError:
        raise IntakeError("id", f"no survey with id {raw[:100]!r}", status=404) from None


# --- responses ------------------------------------------------------------------------------


def survey_body(survey: Survey) -> dict[str, Any]:
    return {
        "id": str(survey.id),
        "name": survey.name,
        "question": survey.question,
        "answers": list(survey.answers),
        "reply_window_s": survey.reply_window_s,
        "template": survey.template,
        "status": survey.status,
        "created_at": survey.created_at.isoformat(),
    }


def send_body(report: SendReport) -> dict[str, Any]:
    return {
        "survey_id": str(report.survey_id),
        "invited": report.invited,
        "already_invited": report.already_invited,
        "rejected": [{"value": r.value, "reason": r.reason}
                     for r in report.rejected[:MAX_REJECTED_SHOWN]],
        "rejected_total": len(report.rejected),
    }


def results_body(results: SurveyResults) -> dict[str, Any]:
    return {
        "survey_id": str(results.survey_id),
        "invited": results.invited,
        "replied": results.replied,
        "response_rate": results.response_rate,
        "counts": dict(results.counts),
        "comments": [{"msisdn": c.msisdn, "text": c.text, "at": c.at.isoformat()}
                     for c in results.comments],
        "comments_total": results.comments_total,
    }


# --- handlers -------------------------------------------------------------------------------


@requires_scope(SCOPE_CAMPAIGNS)
async def post_survey(request: web.Request) -> web.Response:
    body = decode_json_object(await request.read())
    _only(body, CREATE_FIELDS)
    answers = _str_list(body, "answers", required=True)
    window = body.get("reply_window_s")
    if window is None:
        raise IntakeError("reply_window_s", "is required")
    if isinstance(window, bool) or not isinstance(window, int):
        raise IntakeError("reply_window_s", f"must be whole seconds, not {json_type(window)}",
                          status=400)
    assert answers is not None
    survey = await request.app[SURVEY_SERVICE].create(
        _str(body, "name", required=True) or "", _str(body, "question", required=True) or "",
        answers, window, template=_str(body, "template", required=False) or DEFAULT_TEMPLATE)
    log.info("survey %s created by API key %r", survey.id, request[API_KEY].name)
    return web.json_response(survey_body(survey), status=201)


@requires_scope(SCOPE_CAMPAIGNS)
async def get_survey(request: web.Request) -> web.Response:
    survey = await request.app[SURVEY_SERVICE].get(_survey_id(request))
    if survey is None:
        return error_response(404, f"no survey with id {request.match_info['id'][:100]!r}",
                              field="id")
    return web.json_response(survey_body(survey))


@requires_scope(SCOPE_CAMPAIGNS)
async def post_send(request: web.Request) -> web.Response:
    survey_id = _survey_id(request)
    body = decode_json_object(await request.read())
    _only(body, SEND_FIELDS)
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise IntakeError("data", f"must be an object of template variables, not "
                                  f"{json_type(data)}", status=400)
    report = await request.app[SURVEY_SERVICE].send(
        survey_id, tiers=_str_list(body, "tiers", required=False),
        segment=_str(body, "segment", required=False),
        msisdns=_str_list(body, "msisdns", required=False), data=data)
    log.info("survey %s sent by API key %r: %d invited", survey_id, request[API_KEY].name,
             report.invited)
    return web.json_response(send_body(report), status=202)


@requires_scope(SCOPE_CAMPAIGNS)
async def get_results(request: web.Request) -> web.Response:
    results = await request.app[SURVEY_SERVICE].results(_survey_id(request))
    return web.json_response(results_body(results))


@requires_scope(SCOPE_CAMPAIGNS)
async def post_close(request: web.Request) -> web.Response:
    survey = await request.app[SURVEY_SERVICE].close(_survey_id(request))
    return web.json_response(survey_body(survey))


def setup(app: web.Application, *, service: SurveyService) -> None:
    """Add the survey routes to the API (an ``extensions`` entry of ``create_app``)."""
    app[SURVEY_SERVICE] = service
    app.router.add_post("/v1/surveys", post_survey)
    app.router.add_get("/v1/surveys/{id}", get_survey)
    app.router.add_post("/v1/surveys/{id}/send", post_send)
    app.router.add_get("/v1/surveys/{id}/results", get_results)
    app.router.add_post("/v1/surveys/{id}/close", post_close)
