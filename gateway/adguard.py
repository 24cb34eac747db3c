"""The last check of advertising messages, right before their first submit_sm.

:class:`AdvertisingGuard` takes the messages a send job has just claimed and lets through
those that may go now; the others are written back, never lost:

1. outside the advertising window → held until the window opens (every advertising message
   of the batch);
2. the number refused advertising (TC) or is on the Do-Not-Call list → cancelled, with the
   reason — this is what stops a campaign's pending messages to a number that sent TC after
   the upload;
3. over the per-number cap for the advertiser in the last 24 h → held until the oldest
   counted one is 24 h old.

Care messages pass untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.compliance import AdWindow, Clock
from gateway.config import AdvertisingConfig
from gateway.domain import MessageClass
from gateway.store.advertising import AdvertisingStore, CapCandidate
from gateway.store.consent import ConsentStore
from gateway.store.messages import MessageRecord

log = logging.getLogger("smsgw.adguard")


class AdvertisingGuard:
    def __init__(self, store: AdvertisingStore, consent: ConsentStore, cfg: AdvertisingConfig,
                 *, clock: Clock) -> None:
        self._store = store
        self._consent = consent
        self._cfg = cfg
        self.window = AdWindow.from_config(cfg)
        self._clock = clock
        self.deferred = 0
        self.cancelled = 0

    async def screen(self, claimed: Sequence[MessageRecord]) -> list[MessageRecord]:
        """The claimed messages that may be submitted now, in their order."""
        ads = [r for r in claimed if r.message_class is MessageClass.ADVERTISING]
        if not ads:
            return list(claimed)
        now = self._clock()
        stopped: set[object] = set()
        if not self.window.is_open(now):
            opens = self.window.next_open(now)
            reason = (f"outside advertising hours ({self.window.describe()}); waits until "
                      f"{opens.astimezone(self.window.tz):%d/%m/%Y %H:%M}")
            await self._store.defer([r.id for r in ads], [opens] * len(ads),
                                    [reason] * len(ads))
            self.deferred += len(ads)
            log.info("%d advertising message(s) held: %s", len(ads), reason)
            stopped.update(r.id for r in ads)
        else:
            suppressed = await self._consent.suppressed_many({r.msisdn for r in ads})
            gone = [r for r in ads if r.msisdn in suppressed]
            if gone:
                await self._store.cancel_claimed(
                    [r.id for r in gone],
                    [f"not sent: {suppressed[r.msisdn]} (checked before submit)" for r in gone])
                self.cancelled += len(gone)
                stopped.update(r.id for r in gone)
            rest = [r for r in ads if r.id not in stopped]
            deferred = await self._store.enforce_cap(
                [CapCandidate(r.id, r.msisdn, r.advertiser or r.sender) for r in rest],
                limit=self._cfg.max_per_24h, now=now)
            if deferred:
                self.deferred += len(deferred)
                log.info("%d advertising message(s) held by the %d-per-24h cap", len(deferred),
                         self._cfg.max_per_24h)
                stopped.update(deferred)
        return [r for r in claimed if r.id not in stopped]
