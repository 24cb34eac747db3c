"""``POST /v1/events`` and ``GET /v1/events/{event_id}``: billing and care events.

Both need an API key with the scope ``events:write``, given to the operator's source systems
(billing, network operations). Event ids are global across those systems (see
:mod:`gateway.events`), so any such key can read any event.

``POST`` answers 202 when the event is new and its SMS queued, 200 with ``"duplicate": true``
and the same message id when the event id was seen before, 409 when that id was used for
another type or number, 422 for an unknown type, a bad number or data the template cannot use,
400 for a body that is not a JSON object of the right shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.events import EVENT_ID_RE, EventResult, EventService
from gateway.http.auth import API_KEY, requires_scope
from gateway.http.schemas import decode_json_object, error_response, json_type
from gateway.intake import IntakeError
from gateway.store.events import EventRow

log = logging.getLogger("smsgw.http.events")

#: Scope an API key needs to post and read events.
SCOPE_EVENTS = "events:write"
#: Fields accepted in ``POST /v1/events``.
EVENT_FIELDS = ("event_id", "type", "msisdn", "data")

EVENT_SERVICE: web.AppKey[EventService] = web.AppKey("event_service", EventService)


@dataclass(frozen=True, slots=True)
class EventRequest:
    event_id: str
    type: str
    msisdn: str
    data: Mapping[str, Any] = field(default_factory=dict)


# --- parsing and responses ------------------------------------------------------------------


def _required_str(body: Mapping[str, Any], name: str) -> str:
    if name not in body:
        raise IntakeError(name, "is required")
    value = body[name]
    if not isinstance(value, str):
        raise IntakeError(name, f"must be a string, not {json_type(value)}", status=400)
    return value


def parse_event(body: Mapping[str, Any]) -> EventRequest:
    """Check the shape of a ``POST /v1/events`` body; the content is checked by the service."""
    unknown = sorted(set(body) - set(EVENT_FIELDS))
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise IntakeError(unknown[0], f"unknown field(s) {names}; the accepted fields are "
                                      f"{', '.join(EVENT_FIELDS)}")
    data = body.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise IntakeError("data", f"must be an object of template variables, not "
                                  f"{json_type(data)}", status=400)
    return EventRequest(
        event_id=_required_str(body, "event_id"),
        type=_required_str(body, "type"),
        msisdn=_required_str(body, "msisdn"),
        data=data,
    )


def event_summary(result: EventResult) -> dict[str, Any]:
    """Body of ``POST /v1/events``."""
    return {
        "event_id": result.event_id,
        "type": result.type,
        "message_id": None if result.message_id is None else str(result.message_id),
        "status": None if result.status is None else result.status.value,
        "encoding": None if result.encoding is None else result.encoding.value,
        "segments": result.segments,
        "duplicate": result.duplicate,
    }


def event_detail(row: EventRow) -> dict[str, Any]:
    """Body of ``GET /v1/events/{event_id}``; ``message_status`` is null until it is made."""
    message = row.message
    return {
        "event_id": row.event_id,
        "type": row.type,
        "msisdn": row.msisdn,
        "data": dict(row.data),
        "received_at": row.received_at.isoformat(),
        "message_id": None if row.message_id is None else str(row.message_id),
        "message_status": None if message is None else message.status.value,
        "encoding": None if message is None else message.encoding.value,
        "segments": None if message is None else message.segments,
        "message_updated_at": None if message is None else message.updated_at.isoformat(),
    }


# --- handlers -------------------------------------------------------------------------------


@requires_scope(SCOPE_EVENTS)
async def post_event(request: web.Request) -> web.Response:
    """Record one event and queue its SMS: 202 when new, 200 for a duplicate."""
    event = parse_event(decode_json_object(await request.read()))
    key = request[API_KEY]
    result = await request.app[EVENT_SERVICE].handle(
        event.event_id, event.type, event.msisdn, event.data, api_key_id=key.id)
    if result.duplicate:
        log.info("event %s posted again by API key %r", result.event_id, key.name)
    return web.json_response(event_summary(result), status=200 if result.duplicate else 202)


@requires_scope(SCOPE_EVENTS)
async def get_event(request: web.Request) -> web.Response:
    """An event with its message id and the message's status."""
    event_id = request.match_info["event_id"]
    # An id that could never be posted (e.g. with a NUL, which Postgres refuses) is not found.
    valid = EVENT_ID_RE.fullmatch(event_id) is not None
    row = await request.app[EVENT_SERVICE].get(event_id) if valid else None
    if row is None:
        return error_response(404, f"no event with id {event_id[:100]!r}", field="event_id")
    return web.json_response(event_detail(row))


def setup(app: web.Application, *, service: EventService) -> None:
    """Add the event routes to the API (an ``extensions`` entry of ``create_app``)."""
    app[EVENT_SERVICE] = service
    app.router.add_post("/v1/events", post_event)
    app.router.add_get("/v1/events/{event_id}", get_event)
