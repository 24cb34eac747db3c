"""``smsgw dnc import FILE``: load the national Do-Not-Call list (numbers registered by
"DK DNC" to 5656) into Postgres. Exit status 0 when the file was read (bad rows listed), 1
when it cannot be used (nothing imported)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("dnc", help="the Do-Not-Call list (advertising is never sent to it)")
    actions = parser.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", help="add a CSV/XLSX list of numbers to the list")
    imp.add_argument("file", type=Path, help="the .csv or .xlsx file (a msisdn column, or "
                                             "one number per line)")
    imp.add_argument("--source", default="", help="the list's name, kept with each number "
                                                  "(default: the file name)")
    imp.add_argument("--channels", choices=("all", "sms", "voice"), default="all",
                     help="DK DNC (all), DK DNC S (sms) or DK DNC V (voice: SMS still allowed)")
    imp.set_defaults(func=cmd_dnc)


async def _import(args: argparse.Namespace) -> int:
    from gateway.campaign_ingest import UploadError
    from gateway.cli import migrated_pool
    from gateway.config import load_config
    from gateway.dnc_import import import_dnc
    from gateway.store.consent import ConsentStore, DncChannels

    cfg = load_config(args.config)
    async with migrated_pool(cfg) as pool:
        try:
            report = await import_dnc(args.file, ConsentStore(pool),
                                      source=args.source or args.file.name,
                                      channels=DncChannels(args.channels))
        except UploadError as exc:
            print(f"smsgw dnc import: {args.file}: {exc.reason}; nothing was imported",
                  file=sys.stderr)
            return 1
    print(f"{args.file.name}: {report['rows']} rows; {report['accepted']} numbers on the "
          f"Do-Not-Call list ({report['channels']}, source {report['source']!r}); "
          f"{report['rejected']} rejected")
    for row in report["rejected_rows"][:20]:
        print(f"  line {row['line']}: {row['value']!r}: {row['reason']}")
    return 0


def cmd_dnc(args: argparse.Namespace) -> int:
    return asyncio.run(_import(args))
