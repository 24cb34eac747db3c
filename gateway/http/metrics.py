"""``GET /metrics``: the gateway's :class:`~gateway.metrics.Metrics` in the Prometheus text
format (0.0.4).

Public by default: Prometheus scrapers usually carry no bearer key, and the page holds counts,
never message content or numbers. With ``public=False`` (config ``http.metrics_public =
false``) it needs an API key with the scope ``metrics:read`` (Prometheus: ``authorization:
{credentials: <key>}`` in the scrape config).
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.http.auth import public as public_route
from gateway.http.auth import requires_scope
from gateway.metrics import Metrics

log = logging.getLogger("smsgw.http.metrics")

#: Scope an API key needs to read ``/metrics`` when it is not public.
SCOPE_METRICS = "metrics:read"

#: What :meth:`Metrics.render` produces (prometheus_client's ``generate_latest``).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def _metrics_response(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE,
                                            "Cache-Control": "no-store"})


@public_route
async def get_metrics_public(request: web.Request) -> web.Response:
    return await _metrics_response(request)


@requires_scope(SCOPE_METRICS)
async def get_metrics_private(request: web.Request) -> web.Response:
    return await _metrics_response(request)


def setup(app: web.Application, *, metrics: Metrics, public: bool = True) -> None:
    """Add ``GET /metrics`` to the API (an ``extensions`` entry of ``create_app``)."""
    app[METRICS] = metrics
    app.router.add_get("/metrics", get_metrics_public if public else get_metrics_private)
    log.info("GET /metrics: %s", "public" if public else f"needs scope {SCOPE_METRICS}")
