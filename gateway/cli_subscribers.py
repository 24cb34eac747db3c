"""``smsgw subscribers import FILE``: load a CSV/XLSX subscriber list into Postgres.

Exit status: 0 when the file was read (even if some rows were rejected: they are listed), 1
when the file itself cannot be used (nothing was imported). Postgres being down surfaces as
:class:`gateway.service.DependencyDown` (``smsgw`` exits 3).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.subscribers_import import ImportFileError, ImportReport

DEFAULT_LIMIT_ERRORS = 20


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``subscribers import`` to the ``smsgw`` sub-commands."""
    parser = sub.add_parser("subscribers", help="subscriber lists of the care programs")
    actions = parser.add_subparsers(dest="action", required=True)
    imp = actions.add_parser(
        "import", help="import a CSV (UTF-8) or XLSX file; existing numbers are updated",
        description="Columns are found by name (msisdn/so_dien_thoai/phone, full_name/ho_ten, "
                    "date_of_birth/ngay_sinh, tier/hang, points/diem, segment, status, "
                    "khong_dau); other columns are kept as attributes.")
    imp.add_argument("file", type=Path, help="the .csv or .xlsx file")
    imp.add_argument("--limit-errors", type=int, default=DEFAULT_LIMIT_ERRORS, metavar="N",
                     help=f"list at most N rejected rows (default {DEFAULT_LIMIT_ERRORS})")
    imp.set_defaults(func=cmd_subscribers)


def print_report(report: ImportReport, limit: int, file: Path) -> None:
    print(f"{file.name}: {report.rows} rows read ({report.format}); {report.imported} imported "
          f"({report.inserted} new, {report.updated} updated); {report.duplicates_in_file} "
          f"duplicate rows (the later row kept); {report.rejected_total} rejected; "
          f"{report.seconds:.1f} s")
    if report.attributes:
        print(f"kept as attributes: {', '.join(report.attributes)}")
    shown = report.rejected[: max(limit, 0)]
    if not shown:
        return
    print(f"rejected rows (first {len(shown)} of {report.rejected_total}); fix them and import "
          "the file again:")
    for err in shown:
        print(f"  line {err.line}: {err.column} {err.value!r}: {err.reason}")


async def _import(args: argparse.Namespace) -> int:
    from gateway.cli import migrated_pool
    from gateway.config import load_config
    from gateway.store.subscribers import SubscriberStore
    from gateway.subscribers_import import import_file

    cfg = load_config(args.config)
    async with migrated_pool(cfg) as pool:
        try:
            report = await import_file(args.file, SubscriberStore(pool),
                                       region=cfg.sending.region,
                                       max_errors=max(args.limit_errors, 0))
        except ImportFileError as exc:
            print(f"smsgw subscribers import: {args.file}: {exc.reason}; nothing was imported",
                  file=sys.stderr)
            return 1
    print_report(report, args.limit_errors, args.file)
    return 0


def cmd_subscribers(args: argparse.Namespace) -> int:
    return asyncio.run(_import(args))
