"""``smsgw apikey`` create / list / set-rate: argument types and the actions (cli.py wires them).

``defaults`` is ``(key_rate_per_s, key_burst)`` of ``[http]``, to show the limit that applies.
Imported while the parser is built, so it stays light (``gateway.http`` is loaded on use).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from gateway.store.apikeys import ApiKey, ApiKeyStore


def _describe(key: ApiKey, defaults: tuple[float, int]) -> str:
    from gateway.http.keylimit import describe_key_limit

    return describe_key_limit(key, default_rate=defaults[0], default_burst=defaults[1])


def rate_arg(text: str) -> float | None:
    """``--rate``: requests per second ≥ 0 (0 = no limit), or ``default``."""
    if text.strip().lower() == "default":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate: give requests per second (e.g. 20 or 0.5), 0 for no "
            "limit, or 'default'")
    return value


def burst_arg(text: str) -> int | None:
    """``--burst``: a whole number of requests ≥ 1, or ``default``."""
    if text.strip().lower() == "default":
        return None
    if not (text.strip().isascii() and text.strip().isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a burst: give a whole number of requests ≥ 1, or 'default'")
    return int(text)


async def create_key(store: ApiKeyStore, args: argparse.Namespace, defaults: tuple[float, int],
                     known_scopes: Sequence[str]) -> int:
    """``smsgw apikey create``."""
    scopes = args.scope or ["messages:send"]
    bad = [s for s in scopes if s not in known_scopes]
    if bad:
        print(f"unknown scope(s) {', '.join(bad)}; choose from {', '.join(known_scopes)}",
              file=sys.stderr)
        return 2
    try:
        key, plaintext = await store.create(args.name, tuple(scopes), rate_per_s=args.rate,
                                            burst=args.burst)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"created key {key.name!r} (prefix {key.prefix}) with scopes "
          f"{', '.join(key.scopes)}; rate limit {_describe(key, defaults)}")
    print(plaintext)
    print("store it now: it is shown once and kept only as a hash", file=sys.stderr)
    return 0


async def list_keys(store: ApiKeyStore, defaults: tuple[float, int]) -> int:
    """``smsgw apikey list``: every key with its state, rate limit and scopes."""
    for k in await store.list():
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        limit = _describe(k, defaults)
        print(f"{k.id:>4}  {k.name:<24} {k.prefix:<10} {state:<18} {limit:<26} "
              f"{','.join(k.scopes)}")
    return 0


async def set_key_rate(store: ApiKeyStore, args: argparse.Namespace,
                       defaults: tuple[float, int]) -> int:
    """``smsgw apikey set-rate NAME --rate R [--burst B]``."""
    key = await store.set_rate(args.name, args.rate, args.burst)
    if key is None:
        print(f"no active key named or numbered {args.name!r}", file=sys.stderr)
        return 1
    print(f"API key {key.name!r}: rate limit {_describe(key, defaults)} (running gateways "
          "apply it within a few seconds)")
    return 0
