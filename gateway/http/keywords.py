"""Keyword table admin endpoint (scope ``admin``).

* ``POST /v1/admin/keywords/reload`` -> 200 ``{"keywords": n, "aliases": m, "actions": [...]}``
  once the file is re-read, or 422 with the reason it is invalid (the table loaded before
  stays in use).
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.http.auth import API_KEY, requires_scope
from gateway.http.schemas import error_response
from gateway.keywords import KeywordRouter, KeywordTableError

log = logging.getLogger("smsgw.http.keywords")

#: Scope an API key needs to reload the keyword table.
SCOPE_ADMIN = "admin"

KEYWORD_ROUTER: web.AppKey[KeywordRouter] = web.AppKey("keyword_router", KeywordRouter)


@requires_scope(SCOPE_ADMIN)
async def post_reload(request: web.Request) -> web.Response:
    router = request.app[KEYWORD_ROUTER]
    try:
        table = router.reload()
    except KeywordTableError as exc:
        return error_response(422, f"the keyword table is invalid, the one loaded before "
                                   f"stays in use: {exc}", field="keywords")
    log.info("keyword table reloaded by API key %r: %d keyword(s)", request[API_KEY].name,
             len(table))
    return web.json_response({
        "keywords": len(table),
        "aliases": sum(len(entry.aliases) for entry in table.entries),
        "actions": sorted(table.actions),
    })


def setup(app: web.Application, *, router: KeywordRouter) -> None:
    """Add the keyword admin route to the API (an ``extensions`` entry of ``create_app``)."""
    app[KEYWORD_ROUTER] = router
    app.router.add_post("/v1/admin/keywords/reload", post_reload)
