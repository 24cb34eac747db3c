"""The ``components/schemas`` of the OpenAPI document (:mod:`gateway.http.openapi`): the
request and response bodies of the HTTP API, and small builders for JSON Schema (OpenAPI 3.0
dialect: ``nullable``, no type arrays).

Each schema follows the function that writes the body (``message_detail``, ``event_detail``,
``CampaignService.view``...); ``tests/integration/test_schemathesis.py`` checks real answers
against them.
"""

from __future__ import annotations

from typing import Any

from gateway.config import EVENT_TYPES
from gateway.domain import Encoding, MessageClass, MessageStatus
from gateway.http.templates import MAX_SOURCE_CHARS, PREVIEW_FIELDS
from gateway.smpp.encoding import MAX_PARTS
from gateway.store.campaigns import CampaignStatus

Schema = dict[str, Any]


# --- building blocks ------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def string(description: str = "", **more: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **more}


def integer(description: str = "", **more: Any) -> Schema:
    return {"type": "integer", **({"description": description} if description else {}), **more}


def boolean(description: str = "") -> Schema:
    return {"type": "boolean", **({"description": description} if description else {})}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), *,
        closed: bool = False, description: str = "") -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}
UUID_STRING = string(format="uuid")
TIME = string("ISO 8601 time with offset", format="date-time")
MESSAGE_STATUS = string("message status", enum=[s.value for s in MessageStatus])
ENCODING = string("gsm7 (GSM 03.38, data_coding 0) or ucs2 (data_coding 8)",
                  enum=[e.value for e in Encoding])
MESSAGE_CLASS = string("care (transactional) or advertising (labelled, time window, caps, consent)",
                       enum=[c.value for c in MessageClass])
_CAMPAIGN_STATUSES = [v for k, v in vars(CampaignStatus).items() if k.isupper()]


# --- components/schemas ---------------------------------------------------------------------


def _message_schemas() -> dict[str, Schema]:
    n_str = nullable(string())
    return {
        "SendMessage": obj({
            "to": string("the recipient: 0901234567, 84901234567 or +84901234567"),
            "text": nullable(string("the text to send as it is (give text or template)")),
            "template": nullable(string("a program from GET /v1/templates (give text or "
                                        "template)")),
            "data": nullable(obj({}, description="the template's variables")),
            "sender": nullable(string("sender id (brandname); default: the template's or the "
                                      "gateway's")),
            "idempotency_key": nullable(string("the same key again answers 200 with the first "
                                               "message; or the Idempotency-Key header")),
            "khong_dau": nullable(boolean("send without Vietnamese diacritics")),
            "class": nullable(MESSAGE_CLASS),
            "validity_period": nullable(integer("seconds the SMSC keeps trying", minimum=60,
                                                maximum=7 * 86400)),
            "registered_delivery": nullable(boolean("ask for a delivery receipt")),
            "priority_flag": nullable(integer("SMPP priority_flag", minimum=0, maximum=3)),
            "data_coding": nullable(integer("0 (GSM 7-bit) or 8 (UCS-2)", enum=[0, 8])),
            "source_ton": nullable(integer("SMPP type of number of the sender", minimum=0,
                                           maximum=6)),
            "source_npi": nullable(integer("SMPP numbering plan of the sender", minimum=0,
                                           maximum=18)),
        }, ("to",), closed=True),
        "MessageAccepted": obj({
            "id": UUID_STRING, "status": MESSAGE_STATUS, "encoding": ENCODING,
            "segments": integer("SMS parts", minimum=1),
            "to": string("the number, masked"),
            "created": boolean("false when the idempotency key was used before"),
        }, ("id", "status", "encoding", "segments", "to", "created")),
        "MessageEvent": obj({"at": TIME, "status": MESSAGE_STATUS, "detail": string()},
                            ("at", "status", "detail")),
        "Message": obj({
            "id": UUID_STRING, "to": string("E.164 digits"), "sender": string(), "text": string(),
            "template": n_str, "link": nullable(string("the SMSC link that carried it")),
            "options": obj({}, description="per-message SMPP options"),
            "status": MESSAGE_STATUS, "encoding": ENCODING, "segments": integer(),
            "class": MESSAGE_CLASS,
            "attempts": integer(), "smsc_message_id": n_str, "created_at": TIME,
            "updated_at": TIME, "submitted_at": nullable(TIME), "done_at": nullable(TIME),
            "last_error": n_str, "events": array(ref("MessageEvent")),
        }, ("id", "to", "sender", "text", "status", "encoding", "segments", "class",
            "attempts", "created_at", "updated_at", "events")),
    }


def _event_schemas() -> dict[str, Schema]:
    n_int = nullable(integer())
    return {
        "PostEvent": obj({
            "event_id": string("unique across source systems: 1-128 letters, digits, '.', "
                               "'_', ':', '-', starting with a letter or digit"),
            "type": string("event type", enum=list(EVENT_TYPES)),
            "msisdn": string("the subscriber's number"),
            "data": nullable(obj({}, description="the template's variables (amount, period, "
                                                 "due_date, ...)")),
        }, ("event_id", "type", "msisdn"), closed=True),
        "EventAccepted": obj({
            "event_id": string(), "type": string(), "message_id": nullable(UUID_STRING),
            "status": nullable(MESSAGE_STATUS), "encoding": nullable(ENCODING), "segments": n_int,
            "duplicate": boolean("true when this event id was posted before"),
        }, ("event_id", "type", "message_id", "duplicate")),
        "Event": obj({
            "event_id": string(), "type": string(), "msisdn": string(), "data": ANY_OBJECT,
            "received_at": TIME, "message_id": nullable(UUID_STRING),
            "message_status": nullable(MESSAGE_STATUS), "encoding": nullable(ENCODING),
            "segments": n_int, "message_updated_at": nullable(TIME),
        }, ("event_id", "type", "msisdn", "data", "received_at", "message_id")),
    }


def _template_schemas() -> dict[str, Schema]:
    preview: dict[str, Schema] = {
        "template": string("a program name (give template or source)"),
        "source": string("template text (give template or source)",
                         maxLength=MAX_SOURCE_CHARS),
        "data": obj({}, description="variables; default: the template's sample data"),
        "khong_dau": boolean("render without diacritics"),
        "class": MESSAGE_CLASS,
        "max_segments": integer("segment budget (only with source)", minimum=1,
                                maximum=MAX_PARTS),
    }
    assert tuple(preview) == PREVIEW_FIELDS
    return {
        "PreviewRequest": obj({k: nullable(v) for k, v in preview.items()}, closed=True),
        "Preview": obj({
            "text": string(), "length": integer(), "encoding": ENCODING, "segments": integer(),
            "ucs2_chars": array(string()), "khong_dau": boolean(),
            "warnings": array(string()), "class": MESSAGE_CLASS,
            "max_segments": nullable(integer()),
            "template": string(), "sender": string(),
        }, ("text", "length", "encoding", "segments", "ucs2_chars", "warnings", "class")),
        "TemplateList": obj({"templates": array(obj({
            "name": string(), "class": MESSAGE_CLASS, "sender": string(),
            "max_segments": integer(), "description": string(),
            "error": string("set instead of the others when the template's settings are "
                            "broken"),
        }, ("name",)))}, ("templates",)),
    }


def _survey_schemas() -> dict[str, Schema]:
    str_list = nullable(array(string()))
    return {
        "NewSurvey": obj({
            "name": string(), "question": string(),
            "answers": array(string()),
            "reply_window_s": integer("seconds a reply counts after the invitation"),
            "template": nullable(string("the invitation's template")),
        }, ("name", "question", "answers", "reply_window_s"), closed=True),
        "Survey": obj({
            "id": UUID_STRING, "name": string(), "question": string(), "answers": array(string()),
            "reply_window_s": integer(), "template": string(), "status": string(),
            "created_at": TIME,
        }, ("id", "name", "question", "answers", "reply_window_s", "status", "created_at")),
        "SendSurvey": obj({
            "tiers": str_list, "segment": nullable(string()), "msisdns": str_list,
            "data": nullable(obj({}, description="extra template variables")),
        }, closed=True, description="msisdns, or tiers and/or segment"),
        "SurveySent": obj({
            "survey_id": UUID_STRING, "invited": integer(), "already_invited": integer(),
            "rejected": array(obj({"value": string(), "reason": string()})),
            "rejected_total": integer(),
        }, ("survey_id", "invited", "already_invited", "rejected", "rejected_total")),
        "SurveyResults": obj({
            "survey_id": UUID_STRING, "invited": integer(), "replied": integer(),
            "response_rate": {"type": "number"},
            "counts": {"type": "object", "additionalProperties": integer()},
            "comments": array(obj({"msisdn": string("masked"), "text": string(), "at": TIME})),
            "comments_total": integer(),
        }, ("survey_id", "invited", "replied", "response_rate", "counts", "comments")),
    }


def _subscriber_schemas() -> dict[str, Schema]:
    return {
        "ImportReport": obj({
            "format": string("csv or xlsx"), "rows": integer(), "imported": integer(),
            "inserted": integer(), "updated": integer(), "duplicates_in_file": integer(),
            "rejected_total": integer(),
            "rejected": array(obj({"line": integer(), "column": string(), "value": string(),
                                   "reason": string()}, ("line", "value", "reason"))),
            "rejected_truncated": boolean(), "columns": array(string()),
            "attributes": array(string()), "seconds": {"type": "number"},
        }, ("format", "rows", "imported", "inserted", "updated", "rejected_total",
            "rejected")),
        "Subscriber": obj({
            "msisdn": string(), "full_name": string(),
            "date_of_birth": nullable(string(format="date")),
            "tier": string(), "points": integer(), "segment": string(), "status": string(),
            "khong_dau": boolean(), "attributes": ANY_OBJECT,
            "created_at": nullable(TIME), "updated_at": nullable(TIME),
        }, ("msisdn", "full_name", "tier", "status")),
        "DncReport": obj({
            "rows": integer(), "accepted": integer(), "stored": integer(), "rejected": integer(),
            "rejected_rows": array(obj({"line": integer(), "value": string(),
                                        "reason": string()})),
            "source": string(), "channels": string(enum=["all", "sms", "voice"]),
        }, ("rows", "accepted", "stored", "rejected", "rejected_rows", "source", "channels")),
    }


def _campaign_schemas() -> dict[str, Schema]:
    n_time = nullable(string("ISO 8601 time, null when not yet"))
    progress = obj({
        "total": integer(), "counts": {"type": "object", "additionalProperties": integer()},
        "sent": integer(), "done": integer(), "failed": integer(), "percent": {"type": "number"},
        "delivered_percent": {"type": "number"}, "rate_per_s": {"type": "number"},
        "eta_seconds": {"type": "number"}, "eta_at": n_time,
    }, ("total", "counts", "percent"))
    summary: dict[str, Schema] = {
        "id": UUID_STRING, "name": string(), "class": MESSAGE_CLASS, "sender": string(),
        "advertiser": string(), "template": nullable(string()),
        "status": string(enum=_CAMPAIGN_STATUSES), "file_name": string(),
        "created_by": nullable(integer("API key id")),
        "approved_by": nullable(integer("API key id")),
        "created_at": string("ISO 8601 time"),
        "approved_at": string("ISO 8601 time, empty when not approved"),
        "schedule_at": n_time, "started_at": n_time, "paused_at": n_time,
        "finished_at": n_time,
        "upload": obj({}, description="the validation report of the upload: rows, valid, "
                                      "rejected, duplicate, suppressed, ..."),
        "progress": progress,
    }
    required = ("id", "name", "class", "sender", "status", "created_at", "upload", "progress")
    return {
        "CampaignSummary": obj(summary, required),
        "Campaign": obj({
            **summary,
            "estimate": obj({}, description="segments, cost, sending time and ETA"),
            "samples": array(ANY_OBJECT), "source": string("the template text"),
        }, (*required, "estimate", "samples", "source")),
        "CampaignList": obj({"campaigns": array(ref("CampaignSummary"))}, ("campaigns",)),
        "Timeline": obj({"points": array(obj(
            {"t": TIME, "delivered": integer(), "failed": integer()},
            ("t", "delivered", "failed")))}, ("points",)),
        "UploadError": {"allOf": [ref("Error"), obj({
            "upload": ANY_OBJECT,
            "rejected_rows": array(obj({"line": integer(), "value": string(), "kind": string(),
                                        "reason": string()})),
        })], "description": "An unusable upload; when no row could be used, the upload "
                            "report and the first rejected rows come with the error."},
    }


def _other_schemas() -> dict[str, Schema]:
    return {
        "Error": obj({"error": obj({
            "field": string("the field, parameter or header at fault (left out when none)"),
            "reason": string("what is wrong and what to do"),
            "request_id": string("on a 500: the id to look up in the gateway log"),
        }, ("reason",))}, ("error",)),
        "KeywordsReloaded": obj({
            "keywords": integer(), "aliases": integer(), "actions": array(string()),
        }, ("keywords", "aliases", "actions")),
        "Health": obj({
            "status": string(enum=["ok", "degraded"]),
            "smpp": obj({"bound": boolean(), "links": array(ANY_OBJECT),
                         "binds": array(ANY_OBJECT)},
                        description="each link (up, queue, in flight, throttles, rate) and "
                                    "bind (state, in flight, reconnects, last error)"),
            "postgres": boolean(), "redis": boolean(),
            "error": string("set when the health check itself failed"),
        }, ("status",)),
    }


def component_schemas() -> dict[str, Schema]:
    return {**_other_schemas(), **_message_schemas(), **_event_schemas(),
            **_template_schemas(), **_survey_schemas(), **_subscriber_schemas(),
            **_campaign_schemas()}
