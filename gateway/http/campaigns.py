"""Campaign endpoints (``/v1/campaigns``) and the Do-Not-Call import (``/v1/dnc/import``).

``POST /v1/campaigns`` takes ``multipart/form-data``: the list as the ``file`` field (CSV or
XLSX, streamed to a temporary file, at most ``campaigns.max_upload_mb``) and the fields
name, template *or* text, class (advertising|care), sender, advertiser, schedule_at,
msisdn_column, mapping (JSON object: template variable → column), encoding (utf-8|cp1258),
khong_dau. 201 with the campaign (its validation report included); 422 when the file or a
field cannot be used (nothing created); 413 when the file is too large.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from aiohttp import BodyPartReader, web

from gateway.campaign_ingest import UploadError, parse_schedule
from gateway.campaigns import CampaignError, CampaignService, UploadForm
from gateway.dnc_import import import_dnc
from gateway.domain import MessageClass
from gateway.http.auth import API_KEY, requires_scope
from gateway.http.schemas import (
    MULTIPART_ERRORS,
    UploadTooLarge,
    copy_limited,
    error_body,
    error_response,
    malformed_multipart,
    part_chunks,
)
from gateway.store.consent import ConsentStore, DncChannels
from gateway.subscribers_import import ImportFileError

log = logging.getLogger("smsgw.http.campaigns")

_CHUNK = 256 * 1024
_TEXT_FIELDS = ("name", "template", "text", "class", "sender", "advertiser", "schedule_at",
                "msisdn_column", "mapping", "encoding", "khong_dau", "source", "channels")


@dataclass(frozen=True, slots=True)
class CampaignsApi:
    service: CampaignService
    consent: ConsentStore
    default_sender: str
    timezone: str
    max_upload_bytes: int


CAMPAIGNS: web.AppKey[CampaignsApi] = web.AppKey("campaigns", CampaignsApi)


def setup(app: web.Application, *, service: CampaignService, consent: ConsentStore,
          default_sender: str, timezone: str, max_upload_mb: int) -> None:
    app[CAMPAIGNS] = CampaignsApi(service, consent, default_sender, timezone,
                                  max_upload_mb * 1024 * 1024)
    app.router.add_post("/v1/campaigns", post_campaign)
    app.router.add_get("/v1/campaigns", list_campaigns)
    app.router.add_get("/v1/campaigns/{id}", get_campaign)
    app.router.add_get("/v1/campaigns/{id}/timeline", get_timeline)
    app.router.add_get("/v1/campaigns/{id}/report.csv", get_report)
    for action in ("approve", "start", "pause", "resume", "cancel"):
        app.router.add_post(f"/v1/campaigns/{{id}}/{action}", _ACTIONS[action])
    app.router.add_post("/v1/dnc/import", post_dnc)


async def _read_form(request: web.Request, limit: int
                     ) -> tuple[dict[str, str], Path, str]:
    """The text fields, the uploaded file (a temporary path) and its name; a body aiohttp
    cannot read as multipart (no boundary, a bad part header...) is a 400."""
    try:
        fields, path, name = await _read_parts(request, limit)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from None
    for field, value in fields.items():
        if "\x00" in value:  # Postgres cannot store it
            path.unlink(missing_ok=True)
            raise UploadError(f"{field} contains the NUL character (\\u0000); remove it",
                              field=field)
    return fields, path, name


async def _read_parts(request: web.Request, limit: int
                      ) -> tuple[dict[str, str], Path, str]:
    if not request.content_type.startswith("multipart/"):
        raise UploadError("send multipart/form-data with the list in the 'file' field",
                          field="Content-Type")
    fields: dict[str, str] = {}
    path: Path | None = None
    name = ""
    reader = await request.multipart()
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                if path is not None:
                    raise UploadError("send one file", field="file")
                fd, tmp = tempfile.mkstemp(prefix="smsgw-upload-")
                path = Path(tmp)
                name = part.filename or ""
                with os.fdopen(fd, "wb") as out:
                    await copy_limited(part_chunks(part, _CHUNK), out, limit)
            elif part.name in _TEXT_FIELDS:
                fields[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")
            else:
                await part.release()
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    if path is None:
        raise UploadError("no file: send the list in the 'file' field", field="file")
    return fields, path, name


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _form(fields: Mapping[str, str], api: CampaignsApi, file_name: str) -> UploadForm:
    klass = (fields.get("class") or "advertising").strip()
    try:
        message_class = MessageClass(klass)
    except ValueError:
        raise UploadError(f"class must be advertising or care, not {klass!r}",
                          field="class") from None
    mapping: dict[str, str] = {}
    if fields.get("mapping", "").strip():
        try:
            raw = json.loads(fields["mapping"])
        except json.JSONDecodeError as exc:
            raise UploadError(f"mapping is not JSON: {exc}", field="mapping") from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in raw.items()):
            raise UploadError('mapping must be a JSON object {"variable": "column name"}',
                              field="mapping")
        mapping = raw
    template = (fields.get("template") or "").strip() or None
    text = fields.get("text") or None
    if text is not None and not text.strip():
        text = None
    sender = (fields.get("sender") or "").strip() or api.default_sender
    return UploadForm(
        name=(fields.get("name") or "").strip(), message_class=message_class, sender=sender,
        advertiser=(fields.get("advertiser") or "").strip() or sender, template=template,
        text=text,
        schedule_at=parse_schedule(fields.get("schedule_at", ""), ZoneInfo(api.timezone)),
        msisdn_column=(fields.get("msisdn_column") or "").strip() or None, mapping=mapping,
        encoding=(fields.get("encoding") or "utf-8").strip().lower(),
        khong_dau=_bool(fields.get("khong_dau")), file_name=file_name)


def _upload_error(exc: UploadError) -> web.Response:
    body = error_body(exc.reason, field=exc.field)
    body.update(exc.details)
    return web.json_response(body, status=422)


def _campaign_error(exc: CampaignError) -> web.Response:
    return error_response(exc.status, exc.reason, field=exc.field)


@requires_scope("campaigns:write")
async def post_campaign(request: web.Request) -> web.StreamResponse:
    api = request.app[CAMPAIGNS]
    key = request[API_KEY]
    path: Path | None = None
    try:
        fields, path, file_name = await _read_form(request, api.max_upload_bytes)
        form = _form(fields, api, file_name)
        view = await api.service.upload(path, form, api_key_id=key.id)
    except UploadTooLarge:
        return error_response(413, f"the file is larger than {api.max_upload_bytes // 2**20} "
                                   "MB (campaigns.max_upload_mb); split it", field="file")
    except UploadError as exc:
        return _upload_error(exc)
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
    return web.json_response(view, status=201)


def _id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise CampaignError(404, f"no campaign {request.match_info['id']!r} (not a campaign "
                                 "id)") from None


#: Reading campaigns: the makers and the checkers who approve them.
READ = "campaigns:write|campaigns:approve"


@requires_scope(READ)
async def list_campaigns(request: web.Request) -> web.StreamResponse:
    return web.json_response({"campaigns": await request.app[CAMPAIGNS].service.summaries()})


@requires_scope(READ)
async def get_campaign(request: web.Request) -> web.StreamResponse:
    try:
        return web.json_response(await request.app[CAMPAIGNS].service.view(_id(request)))
    except CampaignError as exc:
        return _campaign_error(exc)


@requires_scope(READ)
async def get_timeline(request: web.Request) -> web.StreamResponse:
    try:
        points = await request.app[CAMPAIGNS].service.timeline(_id(request))
    except CampaignError as exc:
        return _campaign_error(exc)
    return web.json_response({"points": points})


@requires_scope(READ)
async def get_report(request: web.Request) -> web.StreamResponse:
    service = request.app[CAMPAIGNS].service
    raw = request.query.get("masked")
    masked = service.report_masked if raw is None else _bool(raw)
    try:
        cid = _id(request)
        chunks = service.report_csv(cid, masked=masked)
        first = await anext(chunks)
    except CampaignError as exc:
        return _campaign_error(exc)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="campaign-{cid}.csv"'})
    await resp.prepare(request)
    await resp.write(first.encode())
    async for chunk in chunks:
        await resp.write(chunk.encode())
    await resp.write_eof()
    return resp


def _action(name: str, scope: str) -> Any:
    @requires_scope(scope)
    async def handle(request: web.Request) -> web.StreamResponse:
        service = request.app[CAMPAIGNS].service
        method = getattr(service, name)
        try:
            view = await method(_id(request), request[API_KEY].id)
        except CampaignError as exc:
            return _campaign_error(exc)
        return web.json_response(view)

    handle.__name__ = f"campaign_{name}"
    return handle


_ACTIONS = {"approve": _action("approve", "campaigns:approve"),
            **{n: _action(n, "campaigns:write") for n in ("start", "pause", "resume", "cancel")}}


@requires_scope("subscribers:write")
async def post_dnc(request: web.Request) -> web.StreamResponse:
    """``POST /v1/dnc/import``: a CSV/XLSX of numbers for the Do-Not-Call list (multipart
    ``file``, optional ``source`` and ``channels`` all|sms|voice)."""
    api = request.app[CAMPAIGNS]
    path: Path | None = None
    try:
        fields, path, file_name = await _read_form(request, api.max_upload_bytes)
        try:
            channels = DncChannels((fields.get("channels") or "all").strip())
        except ValueError:
            raise UploadError("channels must be all, sms or voice", field="channels") from None
        report = await import_dnc(path, api.consent, source=(fields.get("source") or "").strip()
                                  or file_name or "upload", channels=channels)
    except UploadTooLarge:
        return error_response(413, "the file is too large", field="file")
    except UploadError as exc:
        return _upload_error(exc)
    except ImportFileError as exc:  # the file itself cannot be read (not CSV, a bad XLSX)
        return _upload_error(UploadError(exc.reason))
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
    return web.json_response(report)
