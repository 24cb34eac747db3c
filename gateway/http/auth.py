"""Bearer API-key authentication and per-route scopes.

Every route declares its access with :func:`requires_scope` or :func:`public`; a route that
declares neither still needs a valid key (deny by default). The verified :class:`ApiKey` is put
in the request under :data:`API_KEY`.

Verified keys are cached in memory for ``ttl_s`` seconds (default 5), keyed by the key's
sha256, so a busy client does not cost a Postgres round trip per request. The cost: a key
revoked with ``smsgw apikey revoke`` keeps working on this process for at most ``ttl_s``
seconds after the revocation (and a limit changed with ``smsgw apikey set-rate`` applies after
at most as long). Unknown keys are not cached, so a key created a moment ago works at once.

With a :class:`~gateway.http.keylimit.KeyRateLimiter`, every request with a verified key costs
one token of that key's bucket; over the limit the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.http.keylimit import KeyRateLimiter, Refusal
from gateway.http.schemas import error_response
from gateway.store.apikeys import ApiKey, ApiKeyStore, hash_key

log = logging.getLogger("smsgw.http")

H = TypeVar("H", bound=Callable[..., Any])

#: The authenticated key of the request (absent on public routes).
API_KEY = web.RequestKey("api_key", ApiKey)

MISSING_KEY_REASON = "missing bearer API key; create one with 'smsgw apikey create --name NAME'"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}

# Attribute set on handlers: None for a public route, else the scope the key needs ("" = any).
_SCOPE_ATTR = "__smsgw_scope__"


def requires_scope(scope: str) -> Callable[[H], H]:
    """Mark a handler as needing an API key with ``scope`` (``"a|b"``: either of them)."""
    def mark(handler: H) -> H:
        setattr(handler, _SCOPE_ATTR, scope)
        return handler
    return mark


def public(handler: H) -> H:
    """Mark a handler as open to anyone (no API key)."""
    setattr(handler, _SCOPE_ATTR, None)
    return handler


def declared_scope(handler: Callable[..., Any]) -> str | None:
    """What a handler declared: its scope, ``None`` for a public route, ``""`` for any valid
    key (also when it declared nothing: deny by default)."""
    scope: str | None = getattr(handler, _SCOPE_ATTR, "")
    return scope


class KeyVerifier:
    """``ApiKeyStore.verify`` behind a small LRU cache with a time-to-live (see module doc)."""

    def __init__(self, apikeys: ApiKeyStore, *, ttl_s: float = 5.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._apikeys = apikeys
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()

    async def verify(self, plaintext: str) -> ApiKey | None:
        digest = hash_key(plaintext)
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None:
            expires, key = hit
            if now < expires:
                self._cache.move_to_end(digest)
                return key
            del self._cache[digest]
        found = await self._apikeys.verify(plaintext)
        if found is not None and self._ttl_s > 0:
            self._cache[digest] = (now + self._ttl_s, found)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return found

    def clear(self) -> None:
        self._cache.clear()


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _route_scope(request: web.Request) -> tuple[bool, str]:
    """(is public, scope needed) of the matched route; unmatched routes are left alone."""
    handler = request.match_info.handler
    if not hasattr(handler, _SCOPE_ATTR):
        return False, ""
    scope: str | None = getattr(handler, _SCOPE_ATTR)
    return scope is None, scope or ""


def too_many_requests(key: ApiKey, refusal: Refusal) -> web.Response:
    """429 naming the key, its limit and what to do, with ``Retry-After`` in whole seconds."""
    wait = refusal.retry_after_s
    return error_response(
        429, f"API key {key.name!r} is over its rate limit of {refusal.limit.describe()}; "
             f"retry after {wait} s (Retry-After header) and spread requests out, or ask the "
             f"gateway operator to raise it (smsgw apikey set-rate {key.name} --rate R "
             f"--burst B)",
        headers={"Retry-After": str(wait)})


def auth_middleware(verifier: KeyVerifier, limiter: KeyRateLimiter | None = None) -> Middleware:
    """The middleware checking ``Authorization: Bearer <key>``, the key's rate limit (when
    ``limiter`` is given; every request with a verified key counts, whatever its scope) and
    the route's scope."""

    @web.middleware
    async def check_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:  # 404 / 405: nothing to protect
            return await handler(request)
        is_public, scope = _route_scope(request)
        if is_public:
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is None or not header.strip():
            return error_response(401, MISSING_KEY_REASON, field="Authorization",
                                  headers=_CHALLENGE)
        plaintext = _bearer(header)
        if plaintext is None:
            return error_response(401, "must be 'Bearer <API key>'", field="Authorization",
                                  headers=_CHALLENGE)
        key = await verifier.verify(plaintext)
        if key is None:
            log.info("%s %s: unknown or revoked API key from %s", request.method,
                     request.path, request.remote)
            return error_response(401, "unknown or revoked API key", field="Authorization",
                                  headers=_INVALID_CHALLENGE)
        if limiter is not None and (refusal := await limiter.check(key)) is not None:
            return too_many_requests(key, refusal)
        if scope and not any(s in key.scopes for s in scope.split("|")):
            log.info("%s %s: API key %r lacks scope %r", request.method, request.path,
                     key.name, scope)
            wanted = " or ".join(repr(s) for s in scope.split("|"))
            return error_response(403, f"this API key lacks the scope {wanted}; its scopes "
                                       f"are {', '.join(key.scopes) or 'none'}",
                                  field="Authorization")
        request[API_KEY] = key
        return await handler(request)

    return check_api_key
