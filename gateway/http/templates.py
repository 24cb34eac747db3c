"""Template endpoints: ``GET /v1/templates`` and ``POST /v1/templates/preview``.

A preview renders a program (``{"template": "birthday", "data": {...}}``; ``data`` defaults to
the template's ``[sample]``) or raw template text (``{"source": "...", "data": {...},
"class": "advertising"}``) exactly as a send would, and answers the text, its encoding,
segments and the compliance / length warnings. Nothing is sent or stored.

A template that cannot be rendered is a 422 whose ``field`` says what to fix: ``data`` for a
missing variable or a value a filter refuses, ``template`` / ``source`` for an unknown
template, a syntax error or a sandbox refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.domain import MessageClass
from gateway.http.auth import requires_scope
from gateway.http.schemas import decode_json_object, error_response, json_type
from gateway.intake import IntakeError
from gateway.smpp.encoding import MAX_PARTS
from gateway.templating import Rendered, TemplateError, TemplateRenderer

log = logging.getLogger("smsgw.http.templates")

#: Scope an API key needs to list and preview templates (the scope of sending).
SCOPE_TEMPLATES = "messages:send"
PREVIEW_FIELDS = ("template", "source", "data", "khong_dau", "class", "max_segments")
#: Longest raw template text accepted for a preview.
MAX_SOURCE_CHARS = 10_000
# TemplateError reasons that blame the data rather than the template text.
_DATA_REASONS = ("needs variable", "needs attribute", "uses an undefined value", "renders None",
                 "failed")


@dataclass(frozen=True, slots=True)
class TemplatesApi:
    renderer: TemplateRenderer


TEMPLATES: web.AppKey[TemplatesApi] = web.AppKey("templates", TemplatesApi)


def setup(app: web.Application, *, renderer: TemplateRenderer) -> None:
    """Add the template routes to ``app`` (an ``extensions`` entry of ``create_app``).

    Pass the renderer the intake uses (with its defaults: hotline, refusal text) so previews
    match what is sent.
    """
    app[TEMPLATES] = TemplatesApi(renderer)
    app.router.add_get("/v1/templates", list_templates)
    app.router.add_post("/v1/templates/preview", preview)


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreviewRequest:
    template: str | None
    source: str | None
    data: Mapping[str, Any] | None  # None: the template's sample
    khong_dau: bool
    message_class: MessageClass | None
    max_segments: int | None


def _optional(body: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IntakeError(name, f"must be {what}, not {json_type(value)}", status=400)
    return value


def _message_class(value: str | None) -> MessageClass | None:
    if value is None:
        return None
    try:
        return MessageClass(value)
    except ValueError:
        allowed = " or ".join(repr(c.value) for c in MessageClass)
        raise IntakeError("class", f"must be {allowed}, not {value[:40]!r}") from None


def parse_preview(body: Mapping[str, Any]) -> PreviewRequest:
    """Check a ``POST /v1/templates/preview`` body (IntakeError: 400 shape, 422 content)."""
    unknown = sorted(set(body) - set(PREVIEW_FIELDS))
    if unknown:
        raise IntakeError(unknown[0], f"unknown field(s) {', '.join(map(repr, unknown))}; the "
                                      f"accepted fields are {', '.join(PREVIEW_FIELDS)}")
    template = _optional(body, "template", str, "a template name")
    source = _optional(body, "source", str, "template text")
    if (template is None) == (source is None):
        raise IntakeError("template", "give either 'template' (the name of a program) or "
                                      "'source' (template text), not both or neither")
    if source is not None and len(source) > MAX_SOURCE_CHARS:
        raise IntakeError("source", f"is {len(source)} characters; at most {MAX_SOURCE_CHARS}")
    message_class = _message_class(_optional(body, "class", str, "a string"))
    max_segments = _optional(body, "max_segments", int, "an integer")
    if template is not None and (message_class is not None or max_segments is not None):
        name = "class" if message_class is not None else "max_segments"
        raise IntakeError(name, "comes from the template's own settings; only give it with "
                                "'source'")
    if max_segments is not None and not 1 <= max_segments <= MAX_PARTS:
        raise IntakeError("max_segments", f"must be from 1 to {MAX_PARTS}")
    return PreviewRequest(
        template=template,
        source=source,
        data=_optional(body, "data", dict, "an object of template variables"),
        khong_dau=bool(_optional(body, "khong_dau", bool, "true or false")),
        message_class=message_class,
        max_segments=max_segments,
    )


# --- handlers -------------------------------------------------------------------------------


def _error_field(exc: TemplateError, req: PreviewRequest) -> str:
    if exc.reason.startswith(_DATA_REASONS):
        return "data"
    return "source" if req.source is not None else "template"


def _render(renderer: TemplateRenderer, req: PreviewRequest) -> dict[str, Any]:
    if req.template is not None:
        meta = renderer.meta(req.template)
        data = meta.sample if req.data is None else req.data
        rendered = renderer.render(req.template, data, khong_dau=req.khong_dau)
        return {**_rendered_body(rendered, meta.message_class, meta.max_segments),
                "template": meta.name, "sender": meta.sender}
    assert req.source is not None
    message_class = req.message_class or MessageClass.CARE
    rendered = renderer.render_source(req.source, req.data or {}, khong_dau=req.khong_dau,
                                      message_class=message_class,
                                      max_segments=req.max_segments)
    return _rendered_body(rendered, message_class, req.max_segments)


def _rendered_body(rendered: Rendered, message_class: MessageClass,
                   max_segments: int | None) -> dict[str, Any]:
    return {
        "text": rendered.text,
        "length": len(rendered.text),
        "encoding": rendered.encoding.value,
        "segments": rendered.segments,
        "ucs2_chars": list(rendered.ucs2_chars),
        "khong_dau": rendered.khong_dau,
        "warnings": list(rendered.warnings),
        "class": message_class.value,
        "max_segments": max_segments,
    }


@requires_scope(SCOPE_TEMPLATES)
async def preview(request: web.Request) -> web.Response:
    """Render a template or template text without sending anything."""
    req = parse_preview(decode_json_object(await request.read()))
    renderer = request.app[TEMPLATES].renderer
    try:
        body = _render(renderer, req)
    except TemplateError as exc:
        return error_response(422, str(exc), field=_error_field(exc, req))
    return web.json_response(body)


@requires_scope(SCOPE_TEMPLATES)
async def list_templates(request: web.Request) -> web.Response:
    """The programs with their class, default sender, segment budget and description."""
    renderer = request.app[TEMPLATES].renderer
    items: list[dict[str, Any]] = []
    for name in renderer.names():
        try:
            meta = renderer.meta(name)
        except TemplateError as exc:
            log.warning("template %s listed with an error: %s", name, exc)
            items.append({"name": name, "error": str(exc)})
            continue
        items.append({"name": name, "class": meta.message_class.value, "sender": meta.sender,
                      "max_segments": meta.max_segments, "description": meta.description})
    return web.json_response({"templates": items})
