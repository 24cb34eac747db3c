"""``smsgw retention purge [--days N]``: blank old message bodies and MO text now.

The service does the same every ``retention.interval_s`` (gateway/store/retention.py); this
command is for a first purge, a shorter period once, or a gateway run without the loop.
Exit status 0; Postgres down surfaces as :class:`gateway.service.DependencyDown` (exit 3).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway.store.retention import DEFAULT_BATCH, DEFAULT_BODY_DAYS


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``retention purge`` to the ``smsgw`` sub-commands."""
    parser = sub.add_parser("retention", help="retention of message bodies and MO text")
    actions = parser.add_subparsers(dest="action", required=True)
    purge = actions.add_parser(
        "purge", help="blank the text of terminal messages and MOs older than N days",
        description="Rows are kept (counts by status, class and day stay right); only "
                    "messages.body and the MO text become empty, marked with when.")
    purge.add_argument("--days", type=_positive, metavar="N",
                       help="older than N days (default: retention.body_days, "
                            f"{DEFAULT_BODY_DAYS} unless configured)")
    purge.add_argument("--batch", type=_positive, default=DEFAULT_BATCH, metavar="ROWS",
                       help=f"rows per statement (default {DEFAULT_BATCH})")
    purge.set_defaults(func=cmd_retention)


async def _purge(args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.cli import migrated_pool
    from gateway.config import load_config
    from gateway.service import postgres_down
    from gateway.store.retention import RetentionStore

    cfg = load_config(args.config)
    configured = cfg.retention.body_days  # 0 there = keep for ever
    days = int(args.days if args.days is not None else configured)
    if days <= 0:
        print("retention.body_days is 0 (keep for ever): nothing purged; "
              "pass --days N to purge anyway")
        return 0
    async with migrated_pool(cfg) as pool:
        try:
            result = await RetentionStore(pool).purge(days, args.batch)
        except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:  # lost it midway
            raise postgres_down(cfg.database.dsn, exc) from exc
    bodies = "message body" if result.messages == 1 else "message bodies"
    texts = "MO text" if result.inbound == 1 else "MO texts"
    print(f"older than {days} days: blanked {result.messages} {bodies} and "
          f"{result.inbound} {texts}")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    return asyncio.run(_purge(args))
