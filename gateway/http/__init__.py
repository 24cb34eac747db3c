"""HTTP intake of the gateway (aiohttp): send messages, read their status, health."""

from __future__ import annotations

from gateway.http.app import SCOPE_SEND, HealthCheck, create_app
from gateway.http.auth import API_KEY, KeyVerifier, public, requires_scope

__all__ = ["API_KEY", "SCOPE_SEND", "HealthCheck", "KeyVerifier", "create_app", "public",
           "requires_scope"]
