"""The send job: a batch of message ids → :meth:`gateway.sender.Sender.send_ids`."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from gateway.sender import Sender


async def send_messages(ctx: dict[str, Any], ids: list[str]) -> int:
    """Send the messages that are still queued; returns how many this run claimed.

    arq runs a job at least once; a re-run finds the rows already claimed and sends nothing.
    """
    sender: Sender = ctx["sender"]
    bulk = ctx.get("lane") == "bulk"
    return await sender.send_ids([UUID(i) for i in ids], bulk=bulk)
