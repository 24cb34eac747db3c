"""The campaign web pages for the marketing team: ``/ui/``.

Server-rendered *shells* (Jinja2 over ``ui_templates/``) plus a little vanilla JavaScript in
``ui_static/`` (no build step, no CDN: the gateway's machines have no internet). The pages
themselves carry no data and need no key; the browser keeps the API key the user pasted at
sign-in in ``sessionStorage`` and every piece of data comes from the JSON API
(``/v1/campaigns``, ``/v1/templates``) with ``Authorization: Bearer``, so the API's scopes,
maker–checker rule and error messages apply unchanged and there is no cookie to forge
(no CSRF).

* ``GET /ui/`` — sign in, then the campaigns with status and progress;
* ``GET /ui/campaigns/new`` — upload a list, see the validation report;
* ``GET /ui/campaigns/{id}`` — samples, estimate, approve/start/pause/resume/cancel, live
  progress, delivered/failed chart, report download;
* ``GET /ui/static/...`` — the scripts and the stylesheet (versioned URLs, cacheable).

Every page is sent with a strict Content-Security-Policy (scripts and styles only from this
origin, no inline script), so text from an uploaded file can never run as code; the scripts
also only ever insert data as text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import jinja2
from aiohttp import web
from aiohttp.web_urldispatcher import StaticResource

from gateway.http.auth import public

log = logging.getLogger("smsgw.http.ui")

UI_TEMPLATES = Path(__file__).with_name("ui_templates")
UI_STATIC = Path(__file__).with_name("ui_static")
PREFIX = "/ui"
STATIC_ROUTE = "ui-static"

#: Headers of every page: no framing, no inline script, data only from this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class UiPages:
    """The Jinja2 environment and what every page is told (timezone, poll interval)."""

    def __init__(self, app: web.Application, *, timezone: str, poll_ms: int) -> None:
        self._app = app
        self._static_urls: dict[str, str] = {}
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(UI_TEMPLATES),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.globals.update(static=self.static_url, timezone=timezone, poll_ms=poll_ms,
                                prefix=PREFIX)

    def static_url(self, filename: str) -> str:
        """``/ui/static/<filename>?v=<content hash>``: a new file gets a new URL (hashed once
        per process; the files only change with a new release)."""
        url = self._static_urls.get(filename)
        if url is None:
            url = str(self._app.router[STATIC_ROUTE].url_for(filename=filename))
            self._static_urls[filename] = url
        return url

    def render(self, name: str, *, status: int = 200, **context: Any) -> web.Response:
        html = self.env.get_template(name).render(**context)
        return web.Response(text=html, status=status, content_type="text/html",
                            charset="utf-8", headers=PAGE_HEADERS)


UI_PAGES: web.AppKey[UiPages] = web.AppKey("ui_pages", UiPages)


class _PublicStaticResource(StaticResource):
    """aiohttp's static route, marked public: a ``<script src>`` cannot send a bearer key.

    Only the files under ``ui_static/`` are served (aiohttp refuses paths leaving it).
    """

    @public
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await super()._handle(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def setup(app: web.Application, *, timezone: str = "Asia/Ho_Chi_Minh",
          poll_ms: int = 1000) -> None:
    """Add the web pages to ``app`` (an ``extensions`` entry of ``create_app``).

    ``timezone`` is how times are shown (the API's times are absolute); ``poll_ms`` is how
    often a campaign page asks for progress while the campaign is live.
    """
    if not 200 <= poll_ms <= 60_000:
        raise ValueError(f"poll_ms must be from 200 to 60000, not {poll_ms}")
    app[UI_PAGES] = UiPages(app, timezone=timezone, poll_ms=poll_ms)
    static = _PublicStaticResource(f"{PREFIX}/static", UI_STATIC, name=STATIC_ROUTE,
                                   append_version=True)
    app.router.register_resource(static)
    app.router.add_get(PREFIX, to_index)
    app.router.add_get(f"{PREFIX}/", index_page)
    app.router.add_get(f"{PREFIX}/campaigns/new", new_campaign_page)
    app.router.add_get(f"{PREFIX}/campaigns/{{id}}", campaign_page)


# --- handlers -------------------------------------------------------------------------------


@public
async def to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{PREFIX}/")


@public
async def index_page(request: web.Request) -> web.Response:
    """Sign-in and the list of campaigns (filled by ``list.js``)."""
    return request.app[UI_PAGES].render("index.html", page="list")


@public
async def new_campaign_page(request: web.Request) -> web.Response:
    """The upload form and its validation report (``new.js``)."""
    return request.app[UI_PAGES].render("new.html", page="new")


@public
async def campaign_page(request: web.Request) -> web.Response:
    """One campaign (``campaign.js``); an id that is not a UUID is a 404 page."""
    raw_id = request.match_info["id"]
    pages = request.app[UI_PAGES]
    try:
        campaign_id = UUID(raw_id)
    except ValueError:
        return pages.render("not_found.html", status=404, page="missing",
                            what=f"{raw_id[:100]!r} is not a campaign id")
    return pages.render("campaign.html", page="campaign", campaign_id=str(campaign_id))
