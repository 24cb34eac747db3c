"""``smsgw demo``: the whole spine on this machine in under a minute.

Migrates, starts the built-in SMSC simulator and the gateway (HTTP on an ephemeral port),
sends a birthday greeting, a bill notice and a promotion in Vietnamese through the HTTP API,
waits for the delivery receipts and prints what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import aiohttp

from gateway import PROJECT_ROOT
from gateway.compliance import AdWindow, Clock, daytime_clock, utc_now
from gateway.config import Config
from gateway.masking import mask_msisdn
from gateway.service import PG_ERRORS, Gateway, postgres_down
from gateway.smpp.simulator import SimulatorConfig, SmscSimulator
from gateway.store.apikeys import ApiKeyStore
from gateway.store.migrate import ensure_database, migrate_dsn
from gateway.templating import TemplateRenderer, template_defaults

DEMO_SENDS: tuple[tuple[str, str], ...] = (
    ("0901234567", "birthday"),
    ("0987654321", "bill_issued"),
    ("+84 912 345 678", "promotion"),
)
TERMINAL = {"delivered", "undelivered", "expired", "rejected", "failed"}


async def _send_all(base: str, key: str, renderer: TemplateRenderer) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"}
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for to, template in DEMO_SENDS:
            body = {"to": to, "template": template, "data": dict(renderer.meta(template).sample),
                    "idempotency_key": f"demo-{template}-{int(time.time())}"}
            async with http.post(f"{base}/v1/messages", json=body) as resp:
                data = await resp.json()
                if resp.status >= 300:
                    raise RuntimeError(f"POST /v1/messages for {template}: {resp.status} {data}")
            out.append({**data, "to": to, "template": template})
        deadline = time.monotonic() + 30
        pending = {m["id"] for m in out}
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            for m in out:
                if m["id"] not in pending:
                    continue
                async with http.get(f"{base}/v1/messages/{m['id']}") as resp:
                    detail = await resp.json()
                m["status"] = detail["status"]
                m["text"] = detail.get("text", "")
                m["msisdn"] = detail.get("to", "")
                m["events"] = detail.get("events", [])
                if detail["status"] in TERMINAL:
                    pending.discard(m["id"])
    return out


def _print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(f"{'to':<14} {'template':<12} {'encoding':<8} {'segments':>8}  {'final status':<12}")
    print("-" * 60)
    for r in rows:
        who = mask_msisdn(r.get("msisdn") or r["to"])
        print(f"{who:<14} {r['template']:<12} {r['encoding']:<8} "
              f"{r['segments']:>8}  {r['status']:<12}")
    print()
    for r in rows:
        print(f"[{r['template']}] {r.get('text', '')}")
    print()


def _demo_clock(cfg: Config) -> Clock:
    """Real time, except outside advertising hours: then the demo's gateway pretends it is
    10:00 in the advertising time zone so the promotion goes out (a real gateway holds it
    until the window opens)."""
    window = AdWindow.from_config(cfg.advertising)
    shifted = daytime_clock(window)
    if shifted is None:
        return utc_now
    local = utc_now().astimezone(window.tz)
    print(f"It is {local:%H:%M} in {window.tz.key}, outside advertising hours "
          f"({window.describe()}): a real gateway would hold the promotion until the window "
          "opens. This demo pretends it is 10:00.")
    return shifted


async def run_demo(cfg: Config) -> int:
    if cfg.log.level.upper() == "INFO":  # keep the demo's table readable
        logging.getLogger("smsgw").setLevel(logging.WARNING)
    try:
        await ensure_database(cfg.database.dsn)
        await migrate_dsn(cfg.database.dsn, PROJECT_ROOT / "sql")
    except PG_ERRORS as exc:
        raise postgres_down(cfg.database.dsn, exc) from exc
    sim = SmscSimulator(SimulatorConfig(port=0, system_id=cfg.smpp.system_id,
                                        password=cfg.smpp.password, receipt_delay_s=0.5))
    await sim.start()
    cfg = dataclasses.replace(
        cfg, smpp=dataclasses.replace(cfg.smpp, host="127.0.0.1", port=sim.port),
        http=dataclasses.replace(cfg.http, host="127.0.0.1", port=0))
    gw = Gateway(cfg, clock=_demo_clock(cfg))
    key_name = f"demo-{int(time.time() * 1000)}"
    try:
        await gw.start()
        assert gw.pool is not None
        keys = ApiKeyStore(gw.pool)
        _, plaintext = await keys.create(key_name, ("messages:send",))
        print(f"SMSC simulator on 127.0.0.1:{sim.port}; gateway HTTP on "
              f"http://127.0.0.1:{gw.http_port}")
        if not await gw.wait_bound(10):
            print("the gateway could not bind to the simulator", flush=True)
            return 1
        renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms",
                                    defaults=template_defaults(cfg.sending))
        rows = await _send_all(f"http://127.0.0.1:{gw.http_port}", plaintext, renderer)
        _print_table(rows)
        print(f"simulator received {sim.parts_received} submit_sm part(s) for "
              f"{sum(sim.received.values())} message(s); duplicates: {len(sim.duplicates())}")
        await keys.revoke(key_name)
        return 0 if all(r["status"] == "delivered" for r in rows) else 1
    finally:
        await gw.stop(timeout=5)
        await sim.stop()
