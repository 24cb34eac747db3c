"""API keys of the HTTP intake. Only the sha256 of a key is stored; the plaintext is shown once."""

from __future__ import annotations

import builtins
import hashlib
import logging
import math
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

_COLUMNS = "id, name, prefix, scopes, created_at, revoked_at, rate_per_s, burst"
_INSERT = f"""
INSERT INTO api_keys (name, prefix, key_hash, scopes, rate_per_s, burst)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO NOTHING
RETURNING {_COLUMNS}
"""
_VERIFY = f"""
SELECT {_COLUMNS} FROM api_keys
WHERE key_hash = $1 AND revoked_at IS NULL
"""
_LIST = f"SELECT {_COLUMNS} FROM api_keys ORDER BY id"
_SET_RATE_BY_NAME = f"""
UPDATE api_keys SET rate_per_s = $2, burst = $3 WHERE name = $1 AND revoked_at IS NULL
RETURNING {_COLUMNS}
"""
_SET_RATE_BY_ID = f"""
UPDATE api_keys SET rate_per_s = $2, burst = $3 WHERE id = $1 AND revoked_at IS NULL
RETURNING {_COLUMNS}
"""
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
    #: Requests per second allowed to this key: ``None`` = the gateway's default, 0 = no limit.
    rate_per_s: float | None = None
    #: Requests allowed at once above the rate: ``None`` = derived (see gateway.http.keylimit).
    burst: int | None = None


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
        rate_per_s=row["rate_per_s"],
        burst=row["burst"],
    )


def check_rate(rate_per_s: float | None, burst: int | None) -> None:
    """ValueError unless ``rate_per_s`` is None or ≥ 0 and finite, ``burst`` None or ≥ 1."""
    if rate_per_s is not None and not 0 <= rate_per_s < math.inf:
        raise ValueError(f"rate must be a number of requests per second ≥ 0 (0 = no limit), "
                         f"not {rate_per_s!r}")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)
                              or burst < 1):
        raise ValueError(f"burst must be a whole number of requests ≥ 1, not {burst!r}")


class ApiKeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, name: str, scopes: Sequence[str], *, rate_per_s: float | None = None,
                     burst: int | None = None) -> tuple[ApiKey, str]:
        """A new key; returns its record and the plaintext (never stored, shown once).

        ``rate_per_s`` / ``burst``: its request rate limit (``None`` = the gateway's default).
        """
        if not name:
            raise ValueError("an API key needs a name")
        if isinstance(scopes, str):
            raise TypeError("scopes must be a sequence of scope names, not one string")
        check_rate(rate_per_s, burst)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        prefix = plaintext[len(KEY_PREFIX) : len(KEY_PREFIX) + SHOWN_CHARS]
        row = await self._pool.fetchrow(
            _INSERT, name, prefix, hash_key(plaintext), builtins.list(scopes), rate_per_s, burst
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

    async def set_rate(self, name_or_id: str, rate_per_s: float | None,
                       burst: int | None) -> ApiKey | None:
        """Set an active key's rate limit, by name or else by numeric id; ``None`` values go back
        to the defaults. The updated record, or None when no active key matched. Running
        gateways apply it once their key cache expires (``key_cache_ttl_s``, 5 s)."""
        check_rate(rate_per_s, burst)
        row = await self._pool.fetchrow(_SET_RATE_BY_NAME, name_or_id, rate_per_s, burst)
        if row is None and name_or_id.isascii() and name_or_id.isdigit() \
                and int(name_or_id) < 2**31:
            row = await self._pool.fetchrow(_SET_RATE_BY_ID, int(name_or_id), rate_per_s, burst)
        if row is None:
            return None
        key = _api_key(row)
        log.info("API key %r: rate limit set to rate=%s burst=%s", key.name,
                 "default" if rate_per_s is None else f"{rate_per_s:g}/s",
                 "default" if burst is None else burst)
        return key

    async def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        return [_api_key(row) for row in await self._pool.fetch(_LIST)]
