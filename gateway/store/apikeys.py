"""API keys of the HTTP intake. Only the sha256 of a key is stored; the plaintext is shown once."""

from __future__ import annotations

import builtins
import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

log = logging.getLogger("smsgw.store.apikeys")

KEY_PREFIX = "smsgw_"
#: Characters of the random part kept in clear (``ApiKey.prefix``) to tell keys apart.
SHOWN_CHARS = 8

_INSERT = """
INSERT INTO api_keys (name, prefix, key_hash, scopes) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, prefix, scopes, created_at, revoked_at
"""
_VERIFY = """
SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys
WHERE key_hash = $1 AND revoked_at IS NULL
"""
_LIST = "SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys ORDER BY id"
_REVOKE_BY_NAME = """
UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id
"""
_REVOKE_BY_ID = """
UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id
"""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    prefix: str  # first characters of the key after "smsgw_"
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


def hash_key(plaintext: str) -> str:
    """The stored form of a key: sha256 hex of the full plaintext."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        scopes=tuple(row["scopes"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class ApiKeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, name: str, scopes: Sequence[str]) -> tuple[ApiKey, str]:
        """A new key; returns its record and the plaintext (never stored, shown once)."""
        if not name:
            raise ValueError("an API key needs a name")
        if isinstance(scopes, str):
            raise TypeError("scopes must be a sequence of scope names, not one string")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        prefix = plaintext[len(KEY_PREFIX) : len(KEY_PREFIX) + SHOWN_CHARS]
        row = await self._pool.fetchrow(
            _INSERT, name, prefix, hash_key(plaintext), builtins.list(scopes)
        )
        if row is None:
            raise ValueError(f"an API key named {name!r} already exists")
        log.info("created API key %r (%s…) scopes=%s", name, prefix, ",".join(scopes))
        return _api_key(row), plaintext

    async def verify(self, plaintext: str) -> ApiKey | None:
        """The key's record if ``plaintext`` is a known key that is not revoked."""
        if not plaintext.startswith(KEY_PREFIX):
            return None
        row = await self._pool.fetchrow(_VERIFY, hash_key(plaintext))
        return None if row is None else _api_key(row)

    async def revoke(self, name_or_id: str) -> bool:
        """Revoke by name, or else by numeric id; False when no active key matched."""
        if await self._pool.fetchval(_REVOKE_BY_NAME, name_or_id) is not None:
            log.info("revoked API key %r", name_or_id)
            return True
        if not (name_or_id.isascii() and name_or_id.isdigit() and int(name_or_id) < 2**31):
            return False
        if await self._pool.fetchval(_REVOKE_BY_ID, int(name_or_id)) is None:
            return False
        log.info("revoked API key id %s", name_or_id)
        return True

    async def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        return [_api_key(row) for row in await self._pool.fetch(_LIST)]
