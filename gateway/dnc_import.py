"""Import of the national Do-Not-Call list (numbers registered by "DK DNC" to 5656).

A CSV or XLSX file with a number column (``msisdn``, ``so_dien_thoai``, …; a file without a
header whose first cell is a number is read as one number per line) is streamed in batches
into ``dnc_numbers``, each row keeping the list's name (``source``) and the time it was
added. Bad rows are reported with their line, value and reason while good rows go in.
Advertising to a listed number (channels all or sms) is suppressed at upload and cancelled
right before submit.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from gateway.campaign_ingest import UploadError, table_rows
from gateway.store.consent import ConsentStore, DncChannels
from gateway.subscribers_import import (
    FIELD_ALIASES,
    _BadValue,
    _is_blank,
    _shown,
    header_key,
    parse_msisdn,
)

log = logging.getLogger("smsgw.dnc_import")

BATCH = 5000
MAX_SHOWN = 1000


def _read(path: Path) -> tuple[list[list[str]], list[dict[str, Any]], int]:
    """Batches of E.164 numbers, the rejected rows and the number of data rows."""
    batches: list[list[str]] = [[]]
    rejected: list[dict[str, Any]] = []
    rows = 0
    column: int | None = None
    for line, cells in table_rows(path):
        if _is_blank(cells):
            continue
        if column is None:
            keys = [header_key(c) for c in cells]
            hits = [i for i, k in enumerate(keys) if k in FIELD_ALIASES["msisdn"]]
            if hits:
                column = hits[0]
                continue
            try:  # no header: numbers from the first line on, in the first column
                parse_msisdn(cells[0])
            except _BadValue:
                raise UploadError("no phone number column in the header (name it msisdn or "
                                  "so_dien_thoai), and the first line is not a number") from None
            column = 0
        rows += 1
        raw = cells[column] if column < len(cells) else None
        try:
            number = parse_msisdn(raw)
        except _BadValue as exc:
            if len(rejected) < MAX_SHOWN:
                rejected.append({"line": line, "value": _shown(raw), "reason": str(exc)})
            continue
        if len(batches[-1]) >= BATCH:
            batches.append([])
        batches[-1].append(number)
    if column is None:
        raise UploadError("the file has no rows")
    return batches, rejected, rows


async def import_dnc(path: Path, consent: ConsentStore, *, source: str,
                     channels: DncChannels = DncChannels.ALL) -> dict[str, Any]:
    """Add the file's numbers to the Do-Not-Call list; a report of what happened."""
    batches, rejected, rows = await asyncio.to_thread(_read, path)
    added = 0
    for batch in batches:
        added += await consent.add_dnc(batch, source=source, channels=channels)
    accepted = sum(len(b) for b in batches)
    log.info("Do-Not-Call import %r: %d number(s) from %d row(s), %d rejected", source,
             accepted, rows, rows - accepted)
    return {"rows": rows, "accepted": accepted, "stored": added,
            "rejected": rows - accepted, "rejected_rows": rejected, "source": source,
            "channels": channels.value}
