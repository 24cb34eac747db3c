"""``smsgw`` command line: serve, migrate, smsc-sim, apikey, templates, retention, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import PROJECT_ROOT
from gateway.cli_dnc import add_parser as add_dnc_parser
from gateway.cli_retention import add_parser as add_retention_parser
from gateway.cli_subscribers import add_parser as add_subscribers_parser
from gateway.config import Config, ConfigError, load_config
from gateway.logsetup import configure_logging

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("smsgw.cli")

SCOPES = ("messages:send", "events:write", "campaigns:write", "campaigns:approve",
          "subscribers:write", "admin")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


async def _migrate(cfg: Config) -> list[str]:
    from gateway.service import PG_ERRORS, postgres_down
    from gateway.store.migrate import ensure_database, migrate_dsn

    try:
        await ensure_database(cfg.database.dsn)
        return await migrate_dsn(cfg.database.dsn, PROJECT_ROOT / "sql")
    except PG_ERRORS as exc:
        raise postgres_down(cfg.database.dsn, exc) from exc


@contextlib.asynccontextmanager
async def migrated_pool(cfg: Config) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the migrated database, for the one-shot commands (imports, purges)."""
    import asyncpg

    from gateway.service import PG_ERRORS, postgres_down

    await _migrate(cfg)
    try:
        pool = await asyncpg.create_pool(cfg.database.dsn, min_size=1, max_size=2)
    except PG_ERRORS as exc:
        raise postgres_down(cfg.database.dsn, exc) from exc
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(_migrate(_config(args)))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


async def _serve(cfg: Config) -> None:
    from gateway.service import Gateway

    await _migrate(cfg)
    gw = Gateway(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gw.start()
    if gw.keywords is not None:
        loop.add_signal_handler(signal.SIGHUP, gw.keywords.try_reload)
    log.info("smsgw serving; SMSC %s:%s; Ctrl-C or SIGTERM to stop", cfg.smpp.host, cfg.smpp.port)
    await stop.wait()
    log.info("stopping: intake closed, draining the window")
    await gw.stop(timeout=10)


def cmd_serve(args: argparse.Namespace) -> int:
    asyncio.run(_serve(_config(args)))
    return 0


def cmd_smsc_sim(args: argparse.Namespace) -> int:
    from gateway.smpp.simulator import GARBAGE, config_with, parse_status, serve_forever

    try:
        mix: list[tuple[str, float]] = []
        for item in args.mix.split(","):
            state, _, weight = item.partition("=")
            mix.append((state.strip().upper(), float(weight or 1)))
        err_status = err_count = None
        if args.submit_error is not None:
            status_text, _, count_text = args.submit_error.partition(":")
            err_status = parse_status(status_text)
            if count_text and not count_text.isdigit():
                raise ValueError(f"--submit-error {args.submit_error!r}: COUNT is not a number")
            err_count = int(count_text) if count_text else None
        no_resp = args.no_submit_response  # None: not given; 0: every submit; N: the first N
        # explicit flags win over --personality; None means "flag not given"
        cfg = config_with(
            args.personality or (),
            host=args.host, port=args.port, system_id=args.system_id, password=args.password,
            receipt_delay_s=args.receipt_delay, receipt_mix=tuple(mix), tps_limit=args.tps,
            tps_per_bind=args.tps_per_bind, tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            message_id_format=args.id_format, control_host=args.host,
            control_port=args.control_port, seed=args.seed,
            black_hole=args.black_hole,
            no_submit_response=None if no_resp is None else True,
            no_submit_response_count=no_resp or None,
            nack_submits=args.nack_submits,
            submit_error_status=err_status, submit_error_count=err_count,
            unbind_on_submit=args.unbind_on_submit, refuse_binds=args.refuse_binds,
            drop_after=args.drop_after, drop_after_pdus=args.drop_after_pdus,
            garbage_after_bind=None if args.garbage is None else GARBAGE,
            garbage_count=args.garbage or None,
            resp_delay_s=args.resp_delay, resp_jitter_s=args.resp_jitter,
            shuffle_responses=args.shuffle_responses,
            receipt_before_resp=args.receipt_before_resp,
            duplicate_receipts=args.duplicate_receipts,
            shuffle_mo_parts=args.shuffle_mo_parts)
    except ValueError as exc:
        print(f"smsgw smsc-sim: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(cfg))
    return 0


async def _apikey(args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.cli_apikey import create_key, list_keys, set_key_rate
    from gateway.http.keylimit import limit_defaults
    from gateway.store.apikeys import ApiKeyStore

    cfg = _config(args)
    await _migrate(cfg)
    pool = await asyncpg.create_pool(cfg.database.dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = ApiKeyStore(pool)
        defaults = limit_defaults(cfg.http)
        if args.action == "create":
            return await create_key(store, args, defaults, SCOPES)
        if args.action == "list":
            return await list_keys(store, defaults)
        if args.action == "set-rate":
            return await set_key_rate(store, args, defaults)
        if not await store.revoke(args.name):
            print(f"no active key named or numbered {args.name!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.name}")
        return 0
    finally:
        await pool.close()


def cmd_apikey(args: argparse.Namespace) -> int:
    return asyncio.run(_apikey(args))


def cmd_templates(args: argparse.Namespace) -> int:
    from gateway.templating import TemplateError, TemplateRenderer, template_defaults

    renderer = TemplateRenderer(Path(args.dir) if args.dir else PROJECT_ROOT / "templates_sms",
                                defaults=template_defaults(_config(args).sending))
    failed = 0
    print(f"{'template':<22} {'class':<12} {'encoding':<8} {'segments':>8}  warnings")
    for name, result in renderer.check_all():
        if isinstance(result, TemplateError):
            failed += 1
            print(f"{name:<22} {'?':<12} {'-':<8} {'-':>8}  ERROR: {result.reason}")
            continue
        meta = renderer.meta(name)
        warn = "; ".join(result.warnings)
        if result.warnings and meta.message_class.value == "advertising":
            failed += 1
        print(f"{name:<22} {meta.message_class.value:<12} {result.encoding.value:<8} "
              f"{result.segments:>8}  {warn}")
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    """Ask a running gateway's /healthz and print each link, bind and dependency."""
    import json
    import urllib.error
    import urllib.request

    cfg = _config(args)
    url = args.url or f"http://{cfg.http.host}:{cfg.http.port}"
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 still carries the report
        body = json.loads(exc.read())
    except OSError as exc:
        print(f"smsgw status: no gateway answers at {url} ({exc}); is `smsgw serve` running? "
              "(--url to point elsewhere)", file=sys.stderr)
        return 3
    print(f"gateway {url}: {body.get('status')}   postgres: "
          f"{'up' if body.get('postgres') else 'DOWN'}   redis: "
          f"{'up' if body.get('redis') else 'DOWN'}")
    print(f"{'link':<14} {'up':<4} {'queued':>6} {'in flight':>9} {'throttled':>9} "
          f"{'rate/s':>8}  binds")
    for link in body.get("smpp", {}).get("links", []):
        adaptive = link.get("rate", {}).get("adaptive", {})
        rate = adaptive.get("rate")
        binds = ", ".join(f"{b['bind']}={b['state']}" for b in link.get("binds", []))
        print(f"{link['link']:<14} {'yes' if link['up'] else 'NO':<4} {link['queued']:>6} "
              f"{link['in_flight']:>9} {link['throttled']:>9} "
              f"{'-' if rate is None else f'{rate:.0f}':>8}  {binds}")
    return 0 if body.get("status") == "ok" else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return asyncio.run(run_demo(_config(args)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smsgw", description="SMS customer-care gateway")
    p.add_argument("--config", help="TOML config file (default: built-in defaults + SMSGW_* env)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run HTTP API + SMPP binds + arq worker").set_defaults(
        func=cmd_serve)
    sub.add_parser("migrate", help="create the database if needed and apply sql/ migrations"
                   ).set_defaults(func=cmd_migrate)
    sub.add_parser("demo", help="end-to-end demo against the built-in SMSC simulator"
                   ).set_defaults(func=cmd_demo)
    status = sub.add_parser("status", help="state of a running gateway: links, binds, rates")
    status.add_argument("--url", help="gateway base URL (default: from [http] in the config)")
    status.set_defaults(func=cmd_status)

    sim = sub.add_parser("smsc-sim", help="run the built-in SMSC simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=2775)
    sim.add_argument("--system-id", default="smsgw")
    sim.add_argument("--password", default="secret")
    sim.add_argument("--receipt-delay", type=float, default=0.2, help="seconds before a DLR")
    sim.add_argument("--mix", default="DELIVRD=1",
                     help="receipt states and weights, e.g. DELIVRD=0.9,UNDELIV=0.05,EXPIRED=0.05")
    sim.add_argument("--tps", type=float, default=None,
                     help="answer ESME_RTHROTTLED above this many submit_sm/s over all binds")
    sim.add_argument("--tps-per-bind", type=float, default=None,
                     help="answer ESME_RTHROTTLED above this many submit_sm/s on each bind")
    sim.add_argument("--tls-cert", default=None, help="serve SMPP over TLS with this PEM cert")
    sim.add_argument("--tls-key", default=None, help="... and this PEM private key")
    sim.add_argument("--id-format", choices=("hex", "decimal"), default="hex")
    sim.add_argument("--control-port", type=int, default=None,
                     help="HTTP control endpoint (GET /stats, POST /mo, /drop, /reset)")
    sim.add_argument("--seed", type=int, default=None)
    from gateway.smpp.simulator import PERSONALITIES

    fail = sim.add_argument_group(
        "personalities", "failure modes for tests; explicit flags win over --personality. "
        "\"The first N\" counts over the whole run.")
    fail.add_argument("--personality", action="append", choices=tuple(PERSONALITIES),
                      metavar="NAME", help="a named failure mode (repeatable): "
                      + ", ".join(PERSONALITIES))
    fail.add_argument("--black-hole", action="store_true", default=None,
                      help="accept binds, then never answer anything")
    fail.add_argument("--no-submit-response", type=int, nargs="?", const=0, metavar="N",
                      help="accept submits but never answer them (only the first N if given)")
    fail.add_argument("--nack-submits", type=int, metavar="N",
                      help="answer the first N submits generic_nack ESME_RSYSERR")
    fail.add_argument("--submit-error", metavar="STATUS[:COUNT]",
                      help="answer submits with this error, e.g. 0x45:5 or ESME_RSUBMITFAIL "
                      "(the first COUNT, or all)")
    fail.add_argument("--unbind-on-submit", type=int, metavar="N",
                      help="answer the Nth submit with an unbind and close (once)")
    fail.add_argument("--refuse-binds", type=int, metavar="N",
                      help="answer the first N binds ESME_RBINDFAIL")
    fail.add_argument("--drop-after", type=int, metavar="N",
                      help="close the connection on the Nth submit, unanswered (once)")
    fail.add_argument("--drop-after-pdus", type=int, metavar="N",
                      help="close every connection after it has handled N PDUs")
    fail.add_argument("--garbage", type=int, nargs="?", const=0, metavar="N",
                      help="write garbage bytes after each bind (only the first N if given)")
    fail.add_argument("--resp-delay", type=float, metavar="S",
                      help="delay every submit_sm_resp by S seconds")
    fail.add_argument("--resp-jitter", type=float, metavar="S",
                      help="random extra delay of 0..S seconds per submit_sm_resp")
    fail.add_argument("--shuffle-responses", action="store_true", default=None,
                      help="write the submit_sm_resps of one read in random order")
    fail.add_argument("--receipt-before-resp", action="store_true", default=None,
                      help="write each receipt before its submit_sm_resp")
    fail.add_argument("--duplicate-receipts", action="store_true", default=None,
                      help="send every receipt twice")
    fail.add_argument("--shuffle-mo-parts", action="store_true", default=None,
                      help="send multipart MO parts out of order (POST /mo)")
    sim.set_defaults(func=cmd_smsc_sim)

    from gateway.cli_apikey import burst_arg, rate_arg

    key = sub.add_parser("apikey", help="manage API keys (stored hashed)")
    ksub = key.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", help="create a key and print it once")
    kc.add_argument("--name", required=True)
    kc.add_argument("--scope", action="append", choices=SCOPES,
                    help="repeat for several; default messages:send")
    rate_help = ("requests per second allowed to this key (e.g. 20 or 0.5; 0 = no limit; "
                 "'default' = [http] key_rate_per_s)")
    burst_help = ("requests allowed at once above the rate ('default' = [http] key_burst on "
                  "the default rate, else as many seconds of the rate as the defaults give)")
    kc.add_argument("--rate", type=rate_arg, default=None, help=rate_help)
    kc.add_argument("--burst", type=burst_arg, default=None, help=burst_help)
    ksub.add_parser("list", help="list keys with their rate limit (never their secret)")
    kr = ksub.add_parser("revoke", help="revoke a key by name or id")
    kr.add_argument("name")
    ks = ksub.add_parser("set-rate", help="change a key's rate limit (by name or id)")
    ks.add_argument("name")
    ks.add_argument("--rate", type=rate_arg, required=True, help=rate_help)
    ks.add_argument("--burst", type=burst_arg, default=None,
                    help=burst_help + "; omitted = default")
    key.set_defaults(func=cmd_apikey)

    add_subscribers_parser(sub)
    add_retention_parser(sub)
    add_dnc_parser(sub)

    tpl = sub.add_parser("templates", help="template tools")
    tsub = tpl.add_subparsers(dest="action", required=True)
    check = tsub.add_parser("check", help="render every template with its sample data")
    check.add_argument("--dir", help="templates folder (default: templates_sms/)")
    tpl.set_defaults(func=cmd_templates)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        configure_logging(cfg.log.level, cfg.log.format)
    except (ConfigError, ValueError) as exc:
        print(f"smsgw: configuration error: {exc}", file=sys.stderr)
        return 2
    from gateway.service import DependencyDown

    try:
        result: int = args.func(args)
        return result
    except DependencyDown as exc:
        print(f"smsgw: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"smsgw: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"smsgw: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
