"""Subscriber endpoints: ``POST /v1/subscribers/import`` and ``GET /v1/subscribers/{msisdn}``.

The import takes the file as the raw request body (``Content-Type: text/csv`` or the XLSX MIME
type, or ``application/octet-stream``) or as the ``file`` field of a ``multipart/form-data``
form. The body is streamed to a temporary file (never held whole in memory; at most
``max_upload_bytes``), imported by :func:`gateway.subscribers_import.import_file` and deleted.
The file type is recognised from its content, not from the Content-Type.

Answers: 200 with the import report (counts and the first 1,000 rejected rows, each
``{line, column, value, reason}``; ``rejected_total`` counts them all), 422 when the file
itself cannot be used, 413 when it is too large.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import BodyPartReader, web

from gateway.http.auth import API_KEY, requires_scope
from gateway.http.schemas import (
    MULTIPART_ERRORS,
    UploadTooLarge,
    copy_limited,
    error_response,
    malformed_multipart,
    part_chunks,
)
from gateway.intake import IntakeError
from gateway.numbers import InvalidNumber, normalise_msisdn
from gateway.store.subscribers import Subscriber, SubscriberStore
from gateway.subscribers_import import ImportFileError, import_file

log = logging.getLogger("smsgw.http.subscribers")

#: Scope an API key needs to import and read subscribers.
SCOPE_SUBSCRIBERS = "subscribers:write"
#: Rejected rows listed in the answer; ``rejected_total`` still counts all of them.
MAX_REJECTED_SHOWN = 1_000
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
RAW_TYPES = frozenset({"text/csv", "application/csv", "text/plain", "application/octet-stream",
                       "application/vnd.ms-excel", XLSX_MIME})
_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class SubscribersApi:
    store: SubscriberStore
    region: str
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES


SUBSCRIBERS: web.AppKey[SubscribersApi] = web.AppKey("subscribers", SubscribersApi)


def setup(app: web.Application, *, store: SubscriberStore, region: str = "VN",
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """Add the subscriber routes to ``app`` (an ``extensions`` entry of ``create_app``)."""
    app[SUBSCRIBERS] = SubscribersApi(store, region, max_upload_bytes)
    app.router.add_post("/v1/subscribers/import", post_import)
    app.router.add_get("/v1/subscribers/{msisdn}", get_subscriber)


# --- upload ---------------------------------------------------------------------------------


async def _receive(request: web.Request, out: BinaryIO, limit: int) -> int:
    """Write the uploaded file to ``out``; its size in bytes."""
    content_type = request.content_type
    if content_type.startswith("multipart/"):
        try:
            reader = await request.multipart()
            async for part in reader:
                if isinstance(part, BodyPartReader) and part.name == "file":
                    return await copy_limited(part_chunks(part, _CHUNK), out, limit)
        except MULTIPART_ERRORS as exc:
            raise malformed_multipart(exc) from None
        raise IntakeError("file", "the multipart form has no 'file' field; send the CSV or "
                                  "XLSX as the field named 'file'", status=400)
    if content_type not in RAW_TYPES:
        raise IntakeError("Content-Type", f"{content_type!r} is not a subscriber file; send "
                          f"text/csv, {XLSX_MIME} or multipart/form-data with a 'file' field",
                          status=415)
    return await copy_limited(request.content.iter_chunked(_CHUNK), out, limit)


@requires_scope(SCOPE_SUBSCRIBERS)
async def post_import(request: web.Request) -> web.Response:
    """Import a subscriber file: 200 with the report, 422 when the file is unusable."""
    api = request.app[SUBSCRIBERS]
    fd, name = tempfile.mkstemp(prefix="smsgw-subscribers-", suffix=".upload")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            size = await _receive(request, out, api.max_upload_bytes)
        if size == 0:
            return error_response(422, "the file is empty; send the CSV or XLSX as the body",
                                  field="file")
        report = await import_file(path, api.store, region=api.region)
    except UploadTooLarge:
        return error_response(413, f"the file is over {api.max_upload_bytes} bytes; split it",
                              field="file")
    except ImportFileError as exc:
        log.info("subscribers import by API key %r refused: %s", request[API_KEY].name,
                 exc.reason)
        return error_response(422, exc.reason, field="file")
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.unlink)
    log.info("subscribers import by API key %r: %d bytes, %d rows, %d new, %d updated, "
             "%d rejected", request[API_KEY].name, size, report.rows, report.inserted,
             report.updated, report.rejected_total)
    return web.json_response(report.as_dict(max_rejected=MAX_REJECTED_SHOWN))


# --- lookup ---------------------------------------------------------------------------------


def subscriber_body(sub: Subscriber) -> dict[str, Any]:
    """A subscriber as JSON (the full number: the caller holds subscribers:write)."""
    return {
        "msisdn": sub.msisdn,
        "full_name": sub.full_name,
        "date_of_birth": None if sub.date_of_birth is None else sub.date_of_birth.isoformat(),
        "tier": sub.tier,
        "points": sub.points,
        "segment": sub.segment,
        "status": sub.status,
        "khong_dau": sub.khong_dau,
        "attributes": dict(sub.attributes),
        "created_at": None if sub.created_at is None else sub.created_at.isoformat(),
        "updated_at": None if sub.updated_at is None else sub.updated_at.isoformat(),
    }


@requires_scope(SCOPE_SUBSCRIBERS)
async def get_subscriber(request: web.Request) -> web.Response:
    """One subscriber; the number may be written any usual way (0901..., 84901..., +84...)."""
    api = request.app[SUBSCRIBERS]
    raw = request.match_info["msisdn"]
    try:
        msisdn = normalise_msisdn(raw, region=api.region)
    except InvalidNumber as exc:
        return error_response(422, f"not a usable phone number: {exc.reason}", field="msisdn")
    sub = await api.store.get(msisdn)
    if sub is None:
        return error_response(404, "no subscriber with this number; import it with POST "
                                   "/v1/subscribers/import", field="msisdn")
    return web.json_response(subscriber_body(sub))
