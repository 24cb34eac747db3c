"""The back-office webhook: confirmed self-service requests, POSTed as signed JSON.

Each request is one ``POST <url>`` with a JSON body (UTF-8, keys sorted)::

    {"reference": "YC7KQ4MXTA", "type": "change_address", "msisdn": "84912345678",
     "args": {"address": "..."}, "status": "confirmed", "inbound_id": "...",
     "requested_at": "2026-11-20T14:05:00+07:00", "confirmed_at": "..."}

and the headers ``X-Smsgw-Timestamp`` (Unix seconds) and ``X-Smsgw-Signature:
sha256=<hex>``, the HMAC-SHA256 with the shared secret of ``f"{timestamp}."`` followed by
the body bytes. The back office checks it with :func:`verify` (or its own equivalent) and
rejects stale timestamps, which stops replays. ``X-Smsgw-Reference`` repeats the reference:
a post may be delivered more than once (a crash after the 2xx, before it was recorded), so
the back office should treat the reference as an idempotency key. Any 2xx is success; anything
else (including redirects, which are not followed) is a failure that is retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.config import WebhookConfig
from gateway.store.service_requests import ServiceRequest

log = logging.getLogger("smsgw.webhooks")

TIMESTAMP_HEADER = "X-Smsgw-Timestamp"
SIGNATURE_HEADER = "X-Smsgw-Signature"
REFERENCE_HEADER = "X-Smsgw-Reference"
SIGNATURE_PREFIX = "sha256="

#: arq's worker gives up on a job after 50 tries (jobs/worker.py): stay below it.


class WebhookError(Exception):
    """One post did not succeed (no connection, timeout, non-2xx answer)."""


def sign(body: bytes, secret: str, timestamp: int | str) -> str:
    """HMAC-SHA256 (hex) of ``f"{timestamp}."`` + ``body`` with ``secret``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def verify(body: bytes, headers: Mapping[str, str], secret: str, *, max_age_s: float = 300,
           now: float | None = None) -> bool:
    """Whether ``body`` with these headers was signed with ``secret`` no more than
    ``max_age_s`` from ``now`` (either way: clocks drift). Constant-time comparison."""
    if not secret:
        return False
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if timestamp is None or signature is None or not signature.startswith(SIGNATURE_PREFIX):
        return False
    timestamp = timestamp.strip()
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > max_age_s:
        return False
    expected = sign(body, secret, timestamp)
    given = signature[len(SIGNATURE_PREFIX):].strip().lower()
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii", "replace"))


def request_payload(request: ServiceRequest) -> dict[str, Any]:
    """What the back office receives for ``request``."""
    return {
        "reference": request.reference,
        "type": request.kind.value,
        "msisdn": request.msisdn,
        "args": dict(request.args),
        "status": request.status.value,
        "inbound_id": None if request.inbound_id is None else str(request.inbound_id),
        "requested_at": request.requested_at.isoformat(),
        "confirmed_at": None if request.confirmed_at is None
        else request.confirmed_at.isoformat(),
    }


def encode_body(request: ServiceRequest) -> bytes:
    return json.dumps(request_payload(request), ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


def signed_headers(body: bytes, secret: str, *, reference: str,
                   timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json; charset=utf-8",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: SIGNATURE_PREFIX + sign(body, secret, ts),
        REFERENCE_HEADER: reference,
    }


async def post_request(session: aiohttp.ClientSession, cfg: WebhookConfig,
                       request: ServiceRequest) -> None:
    """POST ``request`` to the back office; raises :class:`WebhookError` unless it answers
    2xx within ``cfg.timeout_s``."""
    if not cfg.url:
        raise WebhookError("no webhook URL configured")
    body = encode_body(request)
    headers = signed_headers(body, cfg.secret, reference=request.reference)
    try:
        async with session.post(cfg.url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as resp:
            if not 200 <= resp.status < 300:
                raise WebhookError(f"back office answered HTTP {resp.status}")
            await resp.read()
    except TimeoutError as exc:
        raise WebhookError(f"no answer within {cfg.timeout_s:g}s") from exc
    except aiohttp.ClientError as exc:
        raise WebhookError(f"{type(exc).__name__}: {exc}") from exc
    log.debug("service request %s posted to the back office", request.reference)
