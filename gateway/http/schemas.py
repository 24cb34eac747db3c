"""Request parsing and response shapes of the HTTP API.

No framework: plain functions that take decoded JSON and either return typed values or raise
:class:`~gateway.intake.IntakeError` with the offending ``field`` and a ``reason`` a person can
act on. Wrong JSON types are 400 (the client sent the wrong shape); well-typed but unacceptable
values are 422 (the client sent the wrong content).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, BinaryIO
from uuid import UUID

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.domain import MessageClass
from gateway.intake import IntakeError, SendRequest
from gateway.masking import mask_msisdn
from gateway.store.messages import MessageEvent, MessageRecord

#: Fields accepted in ``POST /v1/messages``.
SEND_FIELDS = (
    "to", "text", "template", "data", "sender", "idempotency_key", "khong_dau", "class",
    "validity_period", "registered_delivery", "priority_flag", "data_coding", "source_ton",
    "source_npi",
)

#: Per-message SMPP options: field → (smallest, largest, what it means).
_OPTION_RANGES: dict[str, tuple[int, int, str]] = {
    "validity_period": (60, 7 * 86400, "seconds the SMSC keeps trying (60 s to 7 days)"),
    "priority_flag": (0, 3, "SMPP priority_flag 0-3"),
    "data_coding": (0, 8, "0 (GSM 7-bit) or 8 (UCS-2)"),
    "source_ton": (0, 6, "SMPP type of number of the sender (0-6)"),
    "source_npi": (0, 18, "SMPP numbering plan of the sender (0-18)"),
}

_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "an object", list: "an array", str: "a string", bool: "a boolean",
    int: "a number", float: "a number", type(None): "null",
}


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages ("an array", "null")."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


# --- errors ---------------------------------------------------------------------------------


def error_body(reason: str, *, field: str | None = None,
               request_id: str | None = None) -> dict[str, Any]:
    """``{"error": {"field": ..., "reason": ..., "request_id": ...}}`` without empty keys."""
    error: dict[str, Any] = {}
    if field is not None:
        error["field"] = field
    error["reason"] = reason
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def error_response(status: int, reason: str, *, field: str | None = None,
                   request_id: str | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON error response; every 4xx/5xx of the API has this shape."""
    return web.json_response(error_body(reason, field=field, request_id=request_id),
                             status=status, headers=headers)


# --- request parsing ------------------------------------------------------------------------

#: What aiohttp's multipart reader raises on a body that is not well-formed multipart: no
#: boundary (KeyError), no first boundary or a truncated part (ValueError), a bad part header
#: (HttpProcessingError), an unknown Content-Encoding of a part (RuntimeError).
MULTIPART_ERRORS: tuple[type[Exception], ...] = (HttpProcessingError, ValueError, KeyError,
                                                 RuntimeError)


class UploadTooLarge(Exception):
    """An uploaded file went over the size limit (the handler answers 413)."""


async def copy_limited(chunks: AsyncIterator[bytes], out: BinaryIO, limit: int) -> int:
    """Write ``chunks`` to ``out``; UploadTooLarge past ``limit`` bytes. Returns the size."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge
        out.write(chunk)
    return size


async def part_chunks(part: BodyPartReader, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """A multipart part's body, chunk by chunk."""
    while chunk := await part.read_chunk(size):
        yield chunk


def malformed_multipart(exc: Exception) -> IntakeError:
    """The 400 for a body aiohttp cannot read as multipart/form-data (``MULTIPART_ERRORS``)."""
    if isinstance(exc, KeyError):
        detail = "its Content-Type has no boundary"
    elif isinstance(exc, HttpProcessingError):
        detail = exc.message
    else:
        detail = str(exc)
    detail = " ".join(detail.split())[:200]
    return IntakeError("body", f"is not well-formed multipart/form-data ({detail}); send the "
                               "file as the 'file' field of a form", status=400)



def decode_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 IntakeError saying what is wrong with it."""
    if not raw.strip():
        raise IntakeError("body", "is empty; send a JSON object", status=400)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntakeError("body", f"is not UTF-8 (invalid byte at offset {exc.start})",
                          status=400) from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntakeError("body", f"is not valid JSON: {exc.msg} at line {exc.lineno} "
                                  f"column {exc.colno}", status=400) from exc
    except RecursionError:
        raise IntakeError("body", "is nested too deeply", status=400) from None
    if not isinstance(value, dict):
        raise IntakeError("body", f"must be a JSON object, not {json_type(value)}", status=400)
    where = _nul_at(value)
    if where is not None:
        raise IntakeError(where, "contains the NUL character (\\u0000), which cannot be stored "
                                 "or sent; remove it")
    return value


def _nul_at(value: Any) -> str | None:
    """Where the first string or object key holding U+0000 is (``data.name``, ``msisdns[2]``),
    or None. Iterative (the depth is whatever json.loads accepted); a path is only spelled
    out for the hit."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return _spell(path) or "body"
        elif isinstance(item, dict):
            for key in item:
                if "\x00" in key:
                    return _spell((*path, key))
            stack.extend((sub, (*path, key)) for key, sub in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((sub, (*path, i)) for i, sub in reversed(list(enumerate(item))))
    return None


def _spell(path: tuple[Any, ...]) -> str:
    """``("data", "x", 2)`` → ``data.x[2]`` (a NUL in a key written as ``\\u0000``)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part.replace("\x00", "\\u0000")
            out += f".{name}" if out else name
    return out


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise IntakeError(name, f"must be a string, not {json_type(value)}", status=400)


def _required_str(body: Mapping[str, Any], name: str) -> str:
    if name not in body:
        raise IntakeError(name, "is required")
    value = _optional_str(body, name)
    if value is None:
        raise IntakeError(name, "must be a string, not null", status=400)
    return value


def _data(body: Mapping[str, Any]) -> dict[str, Any]:
    value = body.get("data")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise IntakeError("data", f"must be an object of template variables, not "
                                  f"{json_type(value)}", status=400)
    return value


def _khong_dau(body: Mapping[str, Any]) -> bool:
    value = body.get("khong_dau")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise IntakeError("khong_dau", f"must be true or false, not {json_type(value)}",
                          status=400)
    return value


def _message_class(body: Mapping[str, Any]) -> MessageClass | None:
    value = _optional_str(body, "class")
    if value is None:
        return None
    try:
        return MessageClass(value)
    except ValueError:
        allowed = " or ".join(repr(c.value) for c in MessageClass)
        raise IntakeError("class", f"must be {allowed}, not {value!r}") from None


def _idempotency_key(body: Mapping[str, Any], header: str | None) -> str | None:
    in_body = _optional_str(body, "idempotency_key")
    if header is None:
        return in_body
    if in_body is not None and in_body != header:
        raise IntakeError("idempotency_key", "differs from the Idempotency-Key header; "
                                             "give one of them, or the same value in both")
    return header


def _options(body: Mapping[str, Any]) -> dict[str, int]:
    """Per-message SMPP options; absent ones fall back to the link's configuration."""
    out: dict[str, int] = {}
    for name, (low, high, meaning) in _OPTION_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise IntakeError(name, f"must be an integer ({meaning}), not {json_type(value)}",
                              status=400)
        if not low <= value <= high or (name == "data_coding" and value not in (0, 8)):
            raise IntakeError(name, f"{value} is out of range: {meaning}")
        out["validity_s" if name == "validity_period" else name] = value
    delivery = body.get("registered_delivery")
    if delivery is not None:
        if not isinstance(delivery, bool):
            raise IntakeError("registered_delivery", "must be true (ask for a delivery "
                              f"receipt) or false, not {json_type(delivery)}", status=400)
        out["registered_delivery"] = int(delivery)
    return out


def parse_send_request(body: Mapping[str, Any], *,
                       idempotency_header: str | None = None) -> SendRequest:
    """Check the shape of a ``POST /v1/messages`` body; the content is checked by Intake."""
    unknown = sorted(set(body) - set(SEND_FIELDS))
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise IntakeError(unknown[0], f"unknown field(s) {names}; the accepted fields are "
                                      f"{', '.join(SEND_FIELDS)}")
    text = _optional_str(body, "text")
    template = _optional_str(body, "template")
    data = _data(body)
    if data and text is not None and template is None:
        raise IntakeError("data", "is only used with 'template'; 'text' is sent as it is")
    return SendRequest(
        to=_required_str(body, "to"),
        text=text,
        template=template,
        data=data,
        sender=_optional_str(body, "sender"),
        idempotency_key=_idempotency_key(body, idempotency_header),
        khong_dau=_khong_dau(body),
        message_class=_message_class(body),
        options=_options(body),
    )


def parse_message_id(raw: str) -> UUID | None:
    """A message id from the URL, or None when it cannot be one (the caller answers 404)."""
    try:
        return UUID(raw)
    except ValueError:
        return None


# --- responses ------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def message_summary(record: MessageRecord, *, created: bool) -> dict[str, Any]:
    """Body of ``POST /v1/messages``: the number is masked, the caller already knows it."""
    return {
        "id": str(record.id),
        "status": record.status.value,
        "encoding": record.encoding.value,
        "segments": record.segments,
        "to": mask_msisdn(record.msisdn),
        "created": created,
    }


def message_detail(record: MessageRecord, events: list[MessageEvent]) -> dict[str, Any]:
    """Body of ``GET /v1/messages/{id}``: the full record for its (authorised) owner."""
    return {
        "id": str(record.id),
        "to": record.msisdn,
        "sender": record.sender,
        "text": record.body,
        "template": record.template,
        "link": record.link,
        "options": dict(record.options),
        "status": record.status.value,
        "encoding": record.encoding.value,
        "segments": record.segments,
        "class": record.message_class.value,
        "attempts": record.attempts,
        "smsc_message_id": record.smsc_message_id,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "submitted_at": _iso(record.submitted_at),
        "done_at": _iso(record.done_at),
        "last_error": record.last_error,
        "events": [
            {"at": _iso(e.at), "status": e.status.value, "detail": e.detail} for e in events
        ],
    }
