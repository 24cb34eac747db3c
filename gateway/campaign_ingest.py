"""Campaign uploads: a CSV or XLSX list of recipients → held messages, streamed.

:func:`open_upload` checks the file and its header off the event loop (:class:`UploadError`
if unusable, before anything is written) and plans the parts it is read in; the
:class:`Upload` then yields the messages as Postgres COPY text (:meth:`Upload.blocks`) while
it is still reading, and once every row is read says what became of them (:meth:`Upload.tail`).
The row work itself is in :mod:`gateway.campaign_parse`: in a thread of this process for a
small file or an XLSX, in one worker process per CPU for a large CSV (each reading its own
byte range of the file), so a million-row list is parsed on every core while Postgres stores
it, and what the gateway keeps is the rejected rows and, briefly, each part's numbers (to
find repeats across parts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import PROJECT_ROOT
from gateway.campaign_parse import (
    CSV_ENCODINGS,
    DATA,
    FRAME,
    TAIL,
    Layout,
    Part,
    PartParser,
    PartTail,
    RowSpec,
    UploadError,
    fast_msisdn,
    labelled,
    merge_tails,
    read_layout,
    split_csv,
    table_rows,
)
from gateway.store.campaigns import UploadTail

__all__ = ["CSV_ENCODINGS", "RowSpec", "Upload", "UploadError", "fast_msisdn", "labelled",
           "open_upload", "parse_schedule", "table_rows"]

#: COPY text blocks buffered between the parsers and Postgres
_DEPTH = 8


class Upload:
    """An opened upload: its header checked, its parts planned."""

    def __init__(self, path: Path, spec: RowSpec, layout: Layout, parts: list[Part]) -> None:
        self.path = path
        self.spec = spec
        self.layout = layout
        self.parts = parts
        self._tails: list[PartTail] = []
        self._tail: UploadTail | None = None

    @property
    def workers(self) -> int:
        """Worker processes the rows are parsed in (0: a thread of this process)."""
        return len(self.parts) if len(self.parts) > 1 else 0

    async def blocks(self) -> AsyncIterator[bytes]:
        """The messages as COPY text (``MESSAGE_COLUMNS``), whole lines per block."""
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_DEPTH)
        stop = threading.Event()
        producers: list[asyncio.Future[None]]
        if self.workers:
            producers = [asyncio.ensure_future(self._process(part, queue))
                         for part in self.parts]
        else:
            loop = asyncio.get_running_loop()
            producers = [loop.run_in_executor(None, self._thread, self.parts[0], queue, loop,
                                              stop)]
        remaining = len(producers)
        try:
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            for producer in producers:
                producer.cancel()
            while not queue.empty():
                queue.get_nowait()
            await asyncio.gather(*producers, return_exceptions=True)

    def _thread(self, part: Part, queue: asyncio.Queue[bytes | BaseException | None],
                loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        def put(item: bytes | BaseException | None) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        try:
            parser = PartParser(self.path, self.spec, self.layout, part)
            for block in parser.blocks():
                if stop.is_set():
                    return
                put(block)
            self._tails.append(parser.tail())
            put(None)
        except BaseException as exc:  # handed over to the consumer, raised there
            if not stop.is_set():
                put(exc)

    async def _process(self, part: Part,
                       queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.campaign_parse", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(pickle.dumps((self.path, self.spec, self.layout, part)))
            await proc.stdin.drain()
            proc.stdin.close()
            while True:
                try:
                    kind, size = FRAME.unpack(await proc.stdout.readexactly(FRAME.size))
                    payload = await proc.stdout.readexactly(size)
                except asyncio.IncompleteReadError:
                    code = await proc.wait()
                    raise RuntimeError(f"the parse worker for part {part.index} of the upload "
                                       f"exited with {code} (its error is in the log)") from None
                if kind == DATA:
                    await queue.put(payload)
                elif kind == TAIL:
                    self._tails.append(pickle.loads(payload))
                    break
                else:
                    raise pickle.loads(payload)
            await _reap(proc)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)
        finally:
            if proc.returncode is None:
                proc.kill()
                await _reap(proc)

    def tail(self) -> UploadTail:
        """Once :meth:`blocks` is exhausted: rows, repeats, rejects and samples."""
        if self._tail is None:
            self._tail = merge_tails(self._tails, self.layout, self.spec.samples)
            self._tails.clear()
        return self._tail


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a worker to exit, reading what it still wrote: with its pipe's buffer full
    (the consumer gone) the transport stops reading, never sees the pipe close, and a bare
    ``wait()`` can wait for ever."""
    assert proc.stdout is not None
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.stdout.read(), 10)
    await proc.wait()


async def open_upload(path: Path, spec: RowSpec, *, workers: int = 0,
                      split_bytes: int = 4 << 20) -> Upload:
    """Check the file and its header, off the event loop (UploadError if unusable), and plan
    its parts: a CSV of ``split_bytes`` or more is read by ``workers`` processes (0: one per
    CPU); anything else by one thread."""
    def prepare() -> Upload:
        high = (int(time.time() * 1000) << 16) | (0x7 << 12) | secrets.randbits(12)
        layout = read_layout(path, spec, id_high=high, id_random=secrets.randbits(30))
        count = min(workers or os.cpu_count() or 1, 16)
        # one part (whole) for an XLSX or a CSV under split_bytes
        parts = split_csv(path, layout, count, min_bytes=max(1, split_bytes // 2))
        return Upload(path, spec, layout, parts)

    return await asyncio.to_thread(prepare)


def parse_schedule(value: str, tz: Any) -> datetime | None:
    """ISO 8601; without an offset it is local time in ``tz``."""
    value = value.strip()
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UploadError(f"schedule_at {value!r} is not an ISO 8601 time "
                          "(e.g. 2026-12-01T09:00)", field="schedule_at") from None
    when = when if when.tzinfo is not None else when.replace(tzinfo=tz)
    try:
        when.astimezone(UTC)
    except OverflowError:
        raise UploadError(f"schedule_at {value!r} is out of range", field="schedule_at") from None
    return when
