"""The SMSC simulator over real TCP (127.0.0.1, ephemeral ports), driven by a tiny test ESME."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from smpplib import consts

from gateway.smpp.codec import Pdu
from gateway.smpp.encoding import decode_text, encode_message, split_udh
from gateway.smpp.receipts import ReceiptState, parse_receipt
from gateway.smpp.session import (
    BadPdu,
    InvalidState,
    Received,
    Reply,
    Request,
    Response,
    Role,
    Session,
    State,
    StrayResponse,
)
from gateway.smpp.simulator import (
    GARBAGE,
    PERSONALITIES,
    NoReceiverError,
    SimulatorConfig,
    SmscSimulator,
    config_with,
    describe_personality,
    parse_status,
)

TIMEOUT = 5.0
SENDER = "8088"
PHONE = "84901234567"
VIETNAMESE = (
    "Kính gửi Quý khách, đơn hàng của Quý khách đã được giao thành công. "
    "Cảm ơn Quý khách đã tin tưởng và sử dụng dịch vụ của chúng tôi. "
    "Nếu có bất kỳ thắc mắc nào, vui lòng liên hệ tổng đài chăm sóc khách hàng. "
)


# --------------------------------------------------------------------------- test ESME

class Esme:
    """Minimal ESME: a Session(Role.ESME) on asyncio streams; acks every deliver_sm."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.session = Session(Role.ESME)
        self.waiting: dict[int, asyncio.Future[Response]] = {}
        self.delivered: asyncio.Queue[Pdu] = asyncio.Queue()
        self.requests_seen: list[str] = []
        self.order: list[str] = []  # "deliver_sm", "submit_sm_resp", ... as they arrived
        self.answered: list[int] = []  # refs of our requests, in the order answered
        self.strays: list[Pdu] = []
        self.bad: list[BadPdu] = []
        self.closed = asyncio.Event()
        self.auto_ack = True
        self._refs = itertools.count(1)
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int) -> Esme:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send_request(self, command: str, **params: Any) -> asyncio.Future[Response]:
        ref = next(self._refs)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting[ref] = fut
        self.writer.write(self.session.send(Request(command=command, params=params, ref=ref)))
        return fut

    async def request(self, command: str, **params: Any) -> Response:
        fut = self.send_request(command, **params)
        await self.writer.drain()
        return await asyncio.wait_for(fut, TIMEOUT)

    async def bind(self, mode: str = "transceiver", *, system_id: str = "smsgw",
                   password: str = "secret") -> Response:
        return await self.request(f"bind_{mode}", system_id=system_id, password=password)

    async def submit_many(self, messages: list[dict[str, Any]]) -> list[Response]:
        futs = [self.send_request("submit_sm", **m) for m in messages]
        await self.writer.drain()
        return list(await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT))

    async def submit(self, text: str = "hello", **params: Any) -> Response:
        params.setdefault("short_message", text.encode("ascii"))
        (resp,) = await self.submit_many([submit_params(**params)])
        return resp

    async def next_deliver(self, timeout: float = TIMEOUT) -> Pdu:
        return await asyncio.wait_for(self.delivered.get(), timeout)

    async def write_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.session.receive_data(data)
                for event in self.session.events():
                    self._on_event(event)
                await self.writer.drain()
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionResetError("connection closed"))

    def _on_event(self, event: Received | Response | InvalidState | BadPdu | StrayResponse,
                  ) -> None:
        if isinstance(event, Response):
            ref = event.ref
            assert isinstance(ref, int)
            self.order.append(event.pdu.command)
            self.answered.append(ref)
            fut = self.waiting.pop(ref)
            if not fut.done():
                fut.set_result(event)
        elif isinstance(event, Received):
            self.requests_seen.append(event.command)
            self.order.append(event.command)
            if event.command == "deliver_sm":
                self.delivered.put_nowait(event.pdu)
                if not self.auto_ack:
                    return
            self.writer.write(self.session.send(
                Reply(command=event.reply_command, sequence=event.sequence)))
        elif isinstance(event, InvalidState):
            self.writer.write(self.session.send(event.reply))
        elif isinstance(event, BadPdu):
            self.bad.append(event)
        else:
            self.strays.append(event.pdu)


def submit_params(*, destination: str = PHONE, source: str = SENDER, short_message: bytes,
                  registered_delivery: int = 0, **extra: Any) -> dict[str, Any]:
    return {"source_addr": source, "destination_addr": destination,
            "short_message": short_message, "registered_delivery": registered_delivery,
            **extra}


async def wait_until(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def mo_text(pdus: list[Pdu]) -> str:
    """Join the deliver_sm parts of one MO (UDH or sar_*) and decode them."""
    chunks: dict[int, bytes] = {}
    for pdu in pdus:
        udh, payload = split_udh(pdu.get("short_message"), pdu.get("esm_class"))
        seq = udh.seq if udh else pdu.get("sar_segment_seqnum", 1)
        chunks[seq] = payload
    data = b"".join(chunks[i] for i in sorted(chunks))
    return decode_text(data, pdus[0].get("data_coding"))


# --------------------------------------------------------------------------- fixtures

SimFactory = Callable[..., Awaitable[SmscSimulator]]
EsmeFactory = Callable[..., Awaitable[Esme]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    sims: list[SmscSimulator] = []

    async def factory(**overrides: Any) -> SmscSimulator:
        overrides.setdefault("port", 0)
        overrides.setdefault("receipt_delay_s", 0.02)
        sim = SmscSimulator(SimulatorConfig(**overrides))
        await sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def connect() -> AsyncIterator[EsmeFactory]:
    esmes: list[Esme] = []

    async def factory(sim: SmscSimulator, mode: str | None = "transceiver") -> Esme:
        esme = await Esme.connect(sim.port)
        esmes.append(esme)
        if mode is not None:
            resp = await esme.bind(mode)
            assert resp.ok, resp
        return esme

    yield factory
    for esme in esmes:
        await esme.close()


# --------------------------------------------------------------------------- binds

async def test_bind_checks_credentials(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim, None)
    wrong_pw = await esme.bind(password="nope")
    assert wrong_pw.status == consts.SMPP_ESME_RINVPASWD
    wrong_id = await esme.bind(system_id="other")
    assert wrong_id.status == consts.SMPP_ESME_RINVSYSID
    assert esme.session.state is State.OPEN
    ok = await esme.bind()
    assert ok.ok
    assert ok.pdu.text("system_id") == "SMSCSIM"
    assert esme.session.bound
    assert sim.binds == 1


async def test_max_binds(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(max_binds=1)
    await connect(sim)
    second = await connect(sim, None)
    resp = await second.bind()
    assert resp.status == consts.SMPP_ESME_RBINDFAIL


async def test_enquire_link_and_unbind(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim)
    assert (await esme.request("enquire_link")).ok
    resp = await esme.request("unbind")
    assert resp.ok and resp.pdu.command == "unbind_resp"
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)  # the SMSC closes after unbind_resp


async def test_simulator_probes_with_enquire_link(make_sim: SimFactory,
                                                  connect: EsmeFactory) -> None:
    sim = await make_sim(enquire_link_interval_s=0.05)
    esme = await connect(sim)
    await wait_until(lambda: "enquire_link" in esme.requests_seen)
    assert not esme.closed.is_set()  # answered, so not dropped


async def test_stop_unbinds_clients(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim)
    await sim.stop()
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)
    assert esme.requests_seen == ["unbind"]


# --------------------------------------------------------------------------- submit + receipts

async def test_submit_gets_unique_ids_and_receipts(make_sim: SimFactory,
                                                   connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim)
    resps = await esme.submit_many(
        [submit_params(short_message=f"order {i} shipped".encode(), registered_delivery=1,
                       source_addr_ton=5, dest_addr_ton=1, dest_addr_npi=1)
         for i in range(5)])
    assert all(r.ok for r in resps)
    ids = [r.pdu.text("message_id") for r in resps]
    assert len(set(ids)) == 5
    receipts = [await esme.next_deliver() for _ in range(5)]
    for pdu in receipts:
        assert pdu.get("esm_class") == 0x04
        assert pdu.text("source_addr") == PHONE and pdu.text("destination_addr") == SENDER
        assert pdu.get("source_addr_ton") == 1 and pdu.get("dest_addr_ton") == 5
        assert pdu.get("message_state") == 2
        parsed = parse_receipt(pdu.get("short_message"))
        assert parsed is not None and parsed.source == "text"
        assert parsed.message_id == pdu.text("receipted_message_id")
        assert parsed.state is ReceiptState.DELIVRD and parsed.error == "000"
        assert parsed.text is not None and parsed.text.startswith("order ")
    assert sorted(p.text("receipted_message_id") for p in receipts) == sorted(ids)
    await wait_until(lambda: sim.receipts_acked == 5)
    assert sim.receipts_sent == 5
    assert sim.parts_received == 5
    assert sim.messages(PHONE) == [f"order {i} shipped" for i in range(5)]


async def test_no_receipt_without_registered_delivery(make_sim: SimFactory,
                                                      connect: EsmeFactory) -> None:
    sim = await make_sim(receipt_delay_s=0.0)
    esme = await connect(sim)
    assert (await esme.submit("no receipt please")).ok
    await asyncio.sleep(0.05)
    assert esme.delivered.empty() and sim.receipts_sent == 0


@pytest.mark.parametrize(("fmt", "expected"), [("hex", ["ff", "100", "101"]),
                                               ("decimal", ["255", "256", "257"])])
async def test_message_id_formats(make_sim: SimFactory, connect: EsmeFactory, fmt: str,
                                  expected: list[str]) -> None:
    sim = await make_sim(message_id_format=fmt, first_message_id=255)
    esme = await connect(sim)
    resps = await esme.submit_many([submit_params(short_message=b"x") for _ in range(3)])
    assert [r.pdu.text("message_id") for r in resps] == expected


async def test_default_ids_are_hex_and_increasing(make_sim: SimFactory,
                                                  connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim)
    resps = await esme.submit_many([submit_params(short_message=b"x") for _ in range(3)])
    values = [int(r.pdu.text("message_id"), 16) for r in resps]
    assert values == sorted(values) and len(set(values)) == 3


async def _receipt_states(sim: SmscSimulator, esme: Esme, n: int) -> list[ReceiptState]:
    resps = await esme.submit_many(
        [submit_params(short_message=b"mix", registered_delivery=1) for _ in range(n)])
    order = {r.pdu.text("message_id"): i for i, r in enumerate(resps)}
    states: list[ReceiptState | None] = [None] * n
    for _ in range(n):
        pdu = await esme.next_deliver()
        parsed = parse_receipt(pdu.get("short_message"))
        assert parsed is not None
        tlv_state = {2: ReceiptState.DELIVRD, 5: ReceiptState.UNDELIV}[pdu.get("message_state")]
        assert parsed.state is tlv_state
        assert parsed.error == ("000" if tlv_state is ReceiptState.DELIVRD else "001")
        states[order[parsed.message_id]] = parsed.state
    return [s for s in states if s is not None]


async def test_receipt_mix_is_seeded(make_sim: SimFactory, connect: EsmeFactory) -> None:
    mix = (("DELIVRD", 0.5), ("UNDELIV", 0.5))
    first = await make_sim(receipt_mix=mix, seed=7, receipt_delay_s=0.0)
    states = await _receipt_states(first, await connect(first), 100)
    assert set(states) == {ReceiptState.DELIVRD, ReceiptState.UNDELIV}
    assert 25 <= states.count(ReceiptState.DELIVRD) <= 75
    second = await make_sim(receipt_mix=mix, seed=7, receipt_delay_s=0.0)
    assert await _receipt_states(second, await connect(second), 100) == states


async def test_receipts_wait_for_a_receiver(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(receipt_delay_s=0.0)
    tx = await connect(sim, "transmitter")
    resp = await tx.submit("where is my receipt", registered_delivery=1)
    await asyncio.sleep(0.05)
    assert sim.receipts_sent == 0 and tx.delivered.empty()
    rx = await connect(sim, "receiver")
    pdu = await rx.next_deliver()
    assert pdu.text("receipted_message_id") == resp.pdu.text("message_id")


async def test_unacked_receipts_are_resent_after_reconnect(make_sim: SimFactory,
                                                           connect: EsmeFactory) -> None:
    sim = await make_sim(receipt_delay_s=0.0)
    esme = await connect(sim)
    esme.auto_ack = False
    resp = await esme.submit("lost receipt", registered_delivery=1)
    first = await esme.next_deliver()
    assert first.text("receipted_message_id") == resp.pdu.text("message_id")
    await sim.drop_connections()
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)
    again = await connect(sim)
    pdu = await again.next_deliver()
    assert pdu.text("receipted_message_id") == resp.pdu.text("message_id")
    await wait_until(lambda: sim.receipts_acked == 1)
    assert sim.receipts_sent == 2


# --------------------------------------------------------------------------- throttling

async def test_tps_limit_throttles(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(tps_limit=10)
    esme = await connect(sim)
    resps = await esme.submit_many(
        [submit_params(short_message=f"m{i}".encode()) for i in range(40)])
    statuses = [r.status for r in resps]
    ok = statuses.count(consts.SMPP_ESME_ROK)
    throttled = statuses.count(consts.SMPP_ESME_RTHROTTLED)
    assert ok + throttled == 40
    assert 10 <= ok <= 15 and throttled >= 25
    assert sim.submits_throttled == throttled
    assert sim.parts_received == ok == sum(sim.received.values())
    ok_texts = {f"m{i}" for i, s in enumerate(statuses) if s == consts.SMPP_ESME_ROK}
    assert set(sim.messages(PHONE)) == ok_texts


# --------------------------------------------------------------------------- counting

@pytest.mark.parametrize("style", ["udh8", "udh16", "sar"])
async def test_multipart_ucs2_is_reassembled(make_sim: SimFactory, connect: EsmeFactory,
                                             style: str) -> None:
    text = (VIETNAMESE * 3)[:400]
    enc = encode_message(text, ref=300 if style == "udh16" else 42)
    assert enc.data_coding == 8 and enc.segments >= 6
    sim = await make_sim()
    esme = await connect(sim)
    messages = []
    for seq, part in enumerate(enc.parts, start=1):
        if style == "sar":
            _, payload = split_udh(part, enc.esm_class)
            messages.append(submit_params(short_message=payload, data_coding=8,
                                          sar_msg_ref_num=7, sar_total_segments=enc.segments,
                                          sar_segment_seqnum=seq))
        else:
            messages.append(submit_params(short_message=part, data_coding=8,
                                          esm_class=enc.esm_class))
    messages.reverse()  # parts may arrive in any order
    resps = await esme.submit_many(messages)
    assert all(r.ok for r in resps)
    assert sim.parts_received == enc.segments
    assert sim.messages(PHONE) == [enc.text]
    assert sim.received[(PHONE, enc.text)] == 1


async def test_gsm7_multipart_and_other_recipients(make_sim: SimFactory,
                                                   connect: EsmeFactory) -> None:
    text = "Your code is {1234} [valid] ~5 min. " * 6
    enc = encode_message(text, ref=9)
    assert enc.data_coding == 0 and enc.segments == 2
    sim = await make_sim()
    esme = await connect(sim)
    other = "84987654321"
    # interleave a second recipient using the same reference: kept apart by address
    await esme.submit_many([
        submit_params(short_message=enc.parts[0], esm_class=0x40),
        submit_params(short_message=enc.parts[0], esm_class=0x40, destination=other),
        submit_params(short_message=enc.parts[1], esm_class=0x40, destination=other),
        submit_params(short_message=enc.parts[1], esm_class=0x40),
    ])
    assert sim.messages(PHONE) == [text] and sim.messages(other) == [text]
    assert sim.duplicates() == {}


async def test_duplicates(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim)
    await esme.submit("your OTP is 1234")
    await esme.submit("your OTP is 1234")
    await esme.submit("your OTP is 5678")
    assert sim.duplicates() == {(PHONE, "your OTP is 1234"): 2}
    assert sim.stats()["duplicates"] == 1 and sim.stats()["messages"] == 2
    sim.reset_counters()
    assert sim.duplicates() == {} and sim.parts_received == 0 and not sim.received


# --------------------------------------------------------------------------- personalities

async def test_drop_after(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(drop_after=3)
    esme = await connect(sim)
    assert (await esme.submit("one")).ok
    assert (await esme.submit("two")).ok
    with pytest.raises(ConnectionResetError):
        await esme.submit("three")
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)
    assert sim.parts_received == 2 and sim.messages(PHONE) == ["one", "two"]
    again = await connect(sim)  # only once per run: the reconnect works
    assert (await again.submit("three")).ok
    assert (await again.submit("four")).ok
    assert sim.messages(PHONE) == ["one", "two", "three", "four"]


async def test_resp_delay(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(resp_delay_s=0.1)
    esme = await connect(sim)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await esme.submit("slow")).ok
    assert loop.time() - started >= 0.09


async def test_garbage_is_survived(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim()
    # an unknown command id: generic_nack with ESME_RINVCMDID, the connection stays usable
    esme = await connect(sim)
    await esme.write_raw(struct.pack(">LLLL", 16, 0x00001234, 0, 77))
    await wait_until(lambda: bool(esme.strays))
    nack = esme.strays[0]
    assert nack.command == "generic_nack" and nack.sequence == 77
    assert nack.status == consts.SMPP_ESME_RINVCMDID
    assert (await esme.request("enquire_link")).ok
    # an absurd length: (maybe a nack, then) the connection is closed
    await esme.write_raw(b"\xff" * 20)
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)
    # a truncated body of a known command
    broken = await connect(sim)
    await broken.write_raw(struct.pack(">LLLL", 20, 0x00000004, 0, 9) + b"\x00abc")
    await wait_until(lambda: bool(broken.strays))
    assert broken.strays[0].command == "generic_nack"
    # the simulator still works
    again = await connect(sim)
    assert (await again.submit("still alive")).ok
    assert sim.messages(PHONE) == ["still alive"]


async def test_submit_before_bind_is_rejected(make_sim: SimFactory,
                                              connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim, None)
    raw = Session(Role.ESME)
    raw.state = State.BOUND_TX  # forge a submit_sm on an unbound connection
    await esme.write_raw(raw.send(Request(command="submit_sm", params=submit_params(
        short_message=b"sneaky"))))
    await wait_until(lambda: bool(esme.strays))
    assert esme.strays[0].status == consts.SMPP_ESME_RINVBNDSTS
    assert sim.parts_received == 0


async def test_send_raw_and_drop_connections(make_sim: SimFactory,
                                             connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim)
    assert await sim.send_raw(b"\xff" * 20) == 1
    await wait_until(lambda: bool(esme.bad))
    assert esme.bad[0].fatal
    other = await connect(sim)
    assert await sim.drop_connections() >= 1
    await asyncio.wait_for(other.closed.wait(), TIMEOUT)
    assert (await (await connect(sim)).submit("after drop")).ok


# --------------------------------------------------------------------------- MO

async def test_inject_mo(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim()
    esme = await connect(sim)
    assert await sim.inject_mo(source=PHONE, destination=SENDER, text="STOP QC") == 1
    pdu = await esme.next_deliver()
    assert pdu.get("esm_class") == 0 and pdu.get("data_coding") == 0
    assert pdu.text("source_addr") == PHONE and pdu.text("destination_addr") == SENDER
    assert mo_text([pdu]) == "STOP QC"

    long_text = VIETNAMESE * 2
    parts = await sim.inject_mo(source=PHONE, destination=SENDER, text=long_text)
    assert parts > 1
    pdus = [await esme.next_deliver() for _ in range(parts)]
    assert all(p.get("esm_class") == 0x40 and p.get("data_coding") == 8 for p in pdus)
    assert mo_text(pdus) == encode_message(long_text, ref=1).text

    parts = await sim.inject_mo(source=PHONE, destination=SENDER, text=long_text,
                                udh_parts=False)
    pdus = [await esme.next_deliver() for _ in range(parts)]
    assert all(p.get("sar_total_segments") == parts for p in pdus)
    assert mo_text(pdus) == encode_message(long_text, ref=1).text

    assert await sim.inject_mo(source=PHONE, destination=SENDER, text="hi",
                               data_coding=8) == 1
    pdu = await esme.next_deliver()
    assert pdu.get("data_coding") == 8 and mo_text([pdu]) == "hi"
    await wait_until(lambda: sim.mo_acked == 1 + 2 * parts + 1)


async def test_inject_mo_needs_a_receiver(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim()
    await connect(sim, "transmitter")
    with pytest.raises(NoReceiverError):
        await sim.inject_mo(source=PHONE, destination=SENDER, text="nobody listens")


# --------------------------------------------------------------------------- control endpoint

def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_control_endpoint(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(control_port=0)
    assert sim.control_url is not None
    url = sim.control_url
    status, body = await asyncio.to_thread(_http, f"{url}/mo",
                                           {"source": PHONE, "destination": SENDER,
                                            "text": "hi"})
    assert status == 409  # nobody bound yet
    esme = await connect(sim)
    await esme.submit("one")
    await esme.submit("one")
    status, stats = await asyncio.to_thread(_http, f"{url}/stats")
    assert status == 200
    assert stats["parts_received"] == 2 and stats["messages"] == 1
    assert stats["duplicates"] == 1 and stats["binds"] == 1
    assert stats["throttled"] == 0 and stats["receipts_sent"] == 0
    status, body = await asyncio.to_thread(_http, f"{url}/mo",
                                           {"source": PHONE, "destination": SENDER,
                                            "text": "Xin chào"})
    assert status == 200 and body == {"parts": 1}
    assert mo_text([await esme.next_deliver()]) == "Xin chào"
    status, body = await asyncio.to_thread(_http, f"{url}/mo", {"text": "missing fields"})
    assert status == 400
    status, _ = await asyncio.to_thread(_http, f"{url}/reset", {})
    assert status == 200 and sim.parts_received == 0
    status, body = await asyncio.to_thread(_http, f"{url}/drop", {})
    assert status == 200 and body == {"dropped": 1}
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)


# --------------------------------------------------------------------------- personalities
# One test per knob of issue 3 item 8; tests/integration/test_personalities.py runs the whole
# gateway against each of them.

async def _settle(*futs: asyncio.Future[Response]) -> None:
    """Collect futures failed by a closed connection (so none is left unretrieved)."""
    await asyncio.gather(*futs, return_exceptions=True)


async def test_black_hole_answers_the_bind_and_nothing_else(make_sim: SimFactory,
                                                            connect: EsmeFactory) -> None:
    sim = await make_sim(black_hole=True)
    esme = await connect(sim)  # the bind is answered
    probe = esme.send_request("enquire_link")
    sub = esme.send_request("submit_sm", **submit_params(short_message=b"into the void",
                                                         registered_delivery=1))
    await esme.writer.drain()
    await asyncio.sleep(0.3)
    assert not probe.done() and not sub.done()
    assert sim.parts_received == 0 and sim.receipts_sent == 0
    unbind = esme.send_request("unbind")  # not even this: the connection is just closed
    await esme.writer.drain()
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)
    await _settle(probe, sub, unbind)
    assert isinstance(unbind.exception(), ConnectionResetError)
    again = await connect(sim)  # binds are still accepted
    assert again.session.bound


async def test_no_submit_response_accepts_but_never_answers(make_sim: SimFactory,
                                                            connect: EsmeFactory) -> None:
    sim = await make_sim(no_submit_response=True, no_submit_response_count=2)
    esme = await connect(sim)
    futs = [esme.send_request("submit_sm", **submit_params(
        short_message=f"m{i}".encode(), registered_delivery=1)) for i in range(3)]
    await esme.writer.drain()
    assert (await asyncio.wait_for(futs[2], TIMEOUT)).ok
    assert (await esme.request("enquire_link")).ok  # everything else is answered
    assert not futs[0].done() and not futs[1].done()
    # the SMSC took all three (the ambiguous case) and sends a receipt for each
    assert sim.messages(PHONE) == ["m0", "m1", "m2"]
    receipts = {(await esme.next_deliver()).text("receipted_message_id") for _ in range(3)}
    assert receipts == set(sim.message_ids(PHONE)) and len(receipts) == 3
    assert sim.stats()["unanswered"] == 2
    assert (await esme.submit("m3")).ok  # only the first two
    await esme.close()
    await _settle(*futs)


async def test_no_submit_response_forever(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(no_submit_response=True)
    esme = await connect(sim)
    futs = [esme.send_request("submit_sm", **submit_params(short_message=b"x"))
            for _ in range(5)]
    await esme.writer.drain()
    await wait_until(lambda: sim.parts_received == 5)
    await asyncio.sleep(0.1)
    assert not any(f.done() for f in futs)
    await esme.close()
    await _settle(*futs)


async def test_nack_submits(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(nack_submits=2)
    esme = await connect(sim)
    first = await esme.submit("one")
    second = await esme.submit("one")
    for resp in (first, second):
        assert resp.pdu.command == "generic_nack" and resp.status == consts.SMPP_ESME_RSYSERR
    third = await esme.submit("one")
    assert third.ok and third.pdu.command == "submit_sm_resp"
    assert sim.messages(PHONE) == ["one"] and sim.stats()["nacked"] == 2


@pytest.mark.parametrize("count", [2, None])
async def test_submit_error_status(make_sim: SimFactory, connect: EsmeFactory,
                                   count: int | None) -> None:
    sim = await make_sim(submit_error_status=consts.SMPP_ESME_RSUBMITFAIL,
                         submit_error_count=count)
    esme = await connect(sim)
    resps = [await esme.submit(f"try {i}") for i in range(4)]
    statuses = [r.status for r in resps]
    assert all(r.pdu.command == "submit_sm_resp" for r in resps)
    if count is None:
        assert statuses == [consts.SMPP_ESME_RSUBMITFAIL] * 4 and sim.parts_received == 0
    else:
        assert statuses == [consts.SMPP_ESME_RSUBMITFAIL] * 2 + [0, 0]
        assert sim.messages(PHONE) == ["try 2", "try 3"]


async def test_unbind_on_submit(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(unbind_on_submit=3)
    esme = await connect(sim)
    futs = [esme.send_request("submit_sm", **submit_params(short_message=f"u{i}".encode()))
            for i in range(4)]
    await esme.writer.drain()
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)
    await _settle(*futs)
    # the two before it were answered first; the third got an unbind; the fourth nothing
    assert [f.exception() is None for f in futs] == [True, True, False, False]
    assert esme.order[-1] == "unbind" and esme.order.count("submit_sm_resp") == 2
    assert sim.messages(PHONE) == ["u0", "u1"]
    again = await connect(sim)  # once per run
    assert (await again.submit("u2")).ok and (await again.submit("u3")).ok
    assert sim.messages(PHONE) == ["u0", "u1", "u2", "u3"]


async def test_refuse_binds(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(refuse_binds=2)
    esme = await connect(sim, None)
    for _ in range(2):
        resp = await esme.bind()
        assert resp.status == consts.SMPP_ESME_RBINDFAIL
    assert (await esme.bind()).ok  # the same connection may try again
    assert sim.binds == 1 and sim.stats()["binds_refused"] == 2


async def test_drop_after_pdus(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(drop_after_pdus=3)
    esme = await connect(sim)  # PDU 1
    assert (await esme.request("enquire_link")).ok  # PDU 2
    futs = [esme.send_request("submit_sm", **submit_params(short_message=f"p{i}".encode()))
            for i in range(3)]  # PDU 3 is handled and answered, then the connection closes
    await esme.writer.drain()
    await asyncio.wait_for(esme.closed.wait(), TIMEOUT)
    await _settle(*futs)
    assert [f.exception() is None for f in futs] == [True, False, False]
    assert sim.messages(PHONE) == ["p0"]
    again = await connect(sim)  # every connection gets its own N
    assert (await again.submit("p1")).ok
    assert (await again.submit("p2")).ok
    await asyncio.wait_for(again.closed.wait(), TIMEOUT)
    assert sim.messages(PHONE) == ["p0", "p1", "p2"]


async def test_garbage_after_bind(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(garbage_after_bind=GARBAGE, garbage_count=1)
    esme = await connect(sim)
    await wait_until(lambda: any(b.fatal for b in esme.bad))
    assert [b.kind for b in esme.bad] == ["unknown_command", "framing"]
    assert esme.strays and esme.strays[0].command == "generic_nack"  # nobody asked for it
    clean = await connect(sim)  # only after the first bind
    assert (await clean.submit("after garbage")).ok
    assert not clean.bad and sim.stats()["garbage_sent"] == 1


async def test_shuffled_responses(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(shuffle_responses=True, seed=3)
    esme = await connect(sim)
    first = len(esme.answered)
    resps = await esme.submit_many([submit_params(short_message=f"s{i}".encode())
                                    for i in range(8)])
    assert all(r.ok for r in resps)
    answered = esme.answered[first:]
    assert len(answered) == len(set(answered)) == 8  # all eight, once each
    assert answered != sorted(answered)  # never in request order
    ids = [r.pdu.text("message_id") for r in resps]
    assert len(set(ids)) == 8 and sorted(ids) == sorted(sim.message_ids(PHONE))
    # each response still carries the id of its own submit (ids are given in arrival order)
    assert [sim.message_ids(PHONE).index(i) for i in ids] == list(range(8))


async def test_jittered_responses(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(resp_delay_s=0.02, resp_jitter_s=0.1, seed=1)
    esme = await connect(sim)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resps = await esme.submit_many([submit_params(short_message=f"j{i}".encode())
                                    for i in range(10)])
    assert loop.time() - started >= 0.02
    assert all(r.ok for r in resps) and len({r.pdu.text("message_id") for r in resps}) == 10


async def test_receipt_before_resp(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(receipt_before_resp=True, receipt_delay_s=5.0)  # delay unused
    esme = await connect(sim)
    resp = await esme.submit("early", registered_delivery=1)
    assert resp.ok
    receipt = await esme.next_deliver(timeout=1.0)
    assert receipt.text("receipted_message_id") == resp.pdu.text("message_id")
    assert esme.order[-2:] == ["deliver_sm", "submit_sm_resp"]


async def test_receipt_before_resp_on_a_separate_receiver(make_sim: SimFactory,
                                                          connect: EsmeFactory) -> None:
    sim = await make_sim(receipt_before_resp=True)
    rx = await connect(sim, "receiver")
    tx = await connect(sim, "transmitter")
    resp = await tx.submit("split", registered_delivery=1)
    receipt = await rx.next_deliver(timeout=1.0)
    assert resp.ok and receipt.text("receipted_message_id") == resp.pdu.text("message_id")


async def test_duplicate_receipts(make_sim: SimFactory, connect: EsmeFactory) -> None:
    sim = await make_sim(duplicate_receipts=True)
    esme = await connect(sim)
    resp = await esme.submit("twice", registered_delivery=1)
    first, second = await esme.next_deliver(), await esme.next_deliver()
    assert first.sequence != second.sequence
    assert {first.text("receipted_message_id"), second.text("receipted_message_id")} == {
        resp.pdu.text("message_id")}
    await wait_until(lambda: sim.receipts_acked == 2)
    assert sim.receipts_sent == 2


async def test_duplicate_receipts_unacked_are_resent_once_each(make_sim: SimFactory,
                                                               connect: EsmeFactory) -> None:
    sim = await make_sim(duplicate_receipts=True)
    esme = await connect(sim)
    esme.auto_ack = False
    assert (await esme.submit("lost acks", registered_delivery=1)).ok
    await esme.next_deliver()
    await esme.next_deliver()
    await esme.close()
    again = await connect(sim)  # the receipt comes again: twice, not four times
    ids = {(await again.next_deliver()).text("receipted_message_id") for _ in range(2)}
    assert len(ids) == 1
    await asyncio.sleep(0.1)
    assert again.delivered.empty() and sim.receipts_sent == 4


@pytest.mark.parametrize("by_config", [False, True])
async def test_multipart_mo_out_of_order(make_sim: SimFactory, connect: EsmeFactory,
                                         by_config: bool) -> None:
    sim = await make_sim(shuffle_mo_parts=by_config, seed=5)
    esme = await connect(sim)
    long_text = VIETNAMESE * 2
    parts = await sim.inject_mo(source=PHONE, destination=SENDER, text=long_text,
                                shuffle_parts=None if by_config else True)
    assert parts >= 3
    pdus = [await esme.next_deliver() for _ in range(parts)]
    seqs = []
    for pdu in pdus:
        udh, _ = split_udh(pdu.get("short_message"), pdu.get("esm_class"))
        assert udh is not None
        seqs.append(udh.seq)
    assert sorted(seqs) == list(range(1, parts + 1)) and seqs != sorted(seqs)
    assert mo_text(pdus) == encode_message(long_text, ref=1).text


def test_personality_config_is_checked() -> None:
    bad: list[dict[str, Any]] = [
        {"no_submit_response_count": 2},  # needs no_submit_response
        {"no_submit_response": True, "no_submit_response_count": 0},
        {"nack_submits": -1}, {"refuse_binds": -2},
        {"submit_error_status": 0}, {"submit_error_count": 3},
        {"unbind_on_submit": 0}, {"drop_after_pdus": 0},
        {"garbage_after_bind": b""}, {"garbage_count": 1},
        {"resp_jitter_s": -0.1},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            SimulatorConfig(**kwargs)
    for overrides in PERSONALITIES.values():  # every named personality is a valid config
        SimulatorConfig(**overrides)
    assert describe_personality(SimulatorConfig()) == "happy"


def test_config_with_personalities_and_flags() -> None:
    cfg = config_with(["nack-submits", "duplicate-receipts"], nack_submits=7, port=0,
                      black_hole=None, tps_limit=None)
    assert cfg.nack_submits == 7 and cfg.duplicate_receipts and not cfg.black_hole
    assert cfg.port == 0 and cfg.tps_limit is None
    garbage = config_with(["garbage"])
    assert garbage.garbage_after_bind == GARBAGE
    assert "garbage_after_bind=" in describe_personality(garbage)
    with pytest.raises(ValueError, match="unknown personality"):
        config_with(["grumpy"])


def test_parse_status() -> None:
    assert parse_status("0x45") == parse_status("69") == consts.SMPP_ESME_RSUBMITFAIL
    assert parse_status("ESME_RSUBMITFAIL") == parse_status("smpp_esme_rsubmitfail") == 0x45
    for bad in ("ESME_NOPE", "forty"):
        with pytest.raises(ValueError):
            parse_status(bad)
