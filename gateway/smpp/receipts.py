"""Delivery receipt (DLR) parsing and formatting, and SMSC message-id matching.

Receipts are read the way Jasmin reads them: the ``receipted_message_id`` and
``message_state`` TLVs are trusted first; the classic receipt text
(``id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…``) fills in whatever
the TLVs did not give. Text parsing is tolerant because SMSCs differ in key case, spacing and
which fields they send.

SMSCs are also inconsistent about message ids: the submit_sm_resp may give ``0001A2B`` and
the receipt ``1a2b`` or its decimal value ``6699``. :func:`canonical_id` is the single form to
store; :func:`id_candidates` gives every form to look a receipt up by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.domain import MessageStatus


class ReceiptState(StrEnum):
    """SMPP 3.4 receipt states, by their 7-character receipt-text names."""

    DELIVRD = "DELIVRD"
    EXPIRED = "EXPIRED"
    DELETED = "DELETED"
    UNDELIV = "UNDELIV"
    ACCEPTD = "ACCEPTD"
    UNKNOWN = "UNKNOWN"
    REJECTD = "REJECTD"
    ENROUTE = "ENROUTE"


#: SMPP ``message_state`` TLV values.
MESSAGE_STATE_TLV: dict[int, ReceiptState] = {
    1: ReceiptState.ENROUTE,
    2: ReceiptState.DELIVRD,
    3: ReceiptState.EXPIRED,
    4: ReceiptState.DELETED,
    5: ReceiptState.UNDELIV,
    6: ReceiptState.ACCEPTD,
    7: ReceiptState.UNKNOWN,
    8: ReceiptState.REJECTD,
}

# Receipt-text spellings seen besides the 7-character names (keys upper case).
_STATE_ALIASES: dict[str, ReceiptState] = {
    "DELIVERED": ReceiptState.DELIVRD,
    "UNDELIVERABLE": ReceiptState.UNDELIV,
    "UNDELIVERED": ReceiptState.UNDELIV,
    "ACCEPTED": ReceiptState.ACCEPTD,
    "REJECTED": ReceiptState.REJECTD,
}

_FINAL_STATUS: dict[ReceiptState, MessageStatus] = {
    ReceiptState.DELIVRD: MessageStatus.DELIVERED,
    ReceiptState.EXPIRED: MessageStatus.EXPIRED,
    ReceiptState.UNDELIV: MessageStatus.UNDELIVERED,
    ReceiptState.DELETED: MessageStatus.UNDELIVERED,
    ReceiptState.REJECTD: MessageStatus.UNDELIVERED,
    ReceiptState.UNKNOWN: MessageStatus.UNDELIVERED,
}


def message_status_for(state: ReceiptState) -> MessageStatus | None:
    """Ledger status for a final receipt state; ``None`` for ENROUTE / ACCEPTD (not final)."""
    return _FINAL_STATUS.get(state)


def state_from_text(value: str) -> ReceiptState:
    """Receipt state from a ``stat:`` value; anything unrecognised is UNKNOWN."""
    key = value.strip().upper()
    if key in ReceiptState.__members__:
        return ReceiptState[key]
    return _STATE_ALIASES.get(key, ReceiptState.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str  # as the SMSC gave it, stripped (see canonical_id / id_candidates)
    state: ReceiptState
    error: str | None
    submit_date: str | None
    done_date: str | None
    text: str | None
    source: str  # "tlv", "text" or "tlv+text": where message_id and state came from


_KEY_RE = re.compile(
    r"(?<![A-Za-z0-9_])(id|sub|dlvrd|submit[ _]*date|done[ _]*date|stat|err|text)[ \t]*:",
    re.IGNORECASE,
)


# The usual layout (SMPP 3.4 appendix B, as most SMSCs write it), values without colons or
# white space: parsed in one match, with the same answer as the general reading below.
_STANDARD = re.compile(
    r"id:([^\s:]+) sub:([^\s:]+) dlvrd:([^\s:]+) submit date:([^\s:]+) "
    r"done date:([^\s:]+) stat:([^\s:]+) err:([^\s:]+)(?: [Tt]ext:(.*))?", re.DOTALL)
_STANDARD_KEYS = ("id", "sub", "dlvrd", "submit date", "done date", "stat", "err", "text")


def _parse_text(text: str) -> dict[str, str]:
    """Receipt-text fields by lower-case key (``submit date`` / ``done date`` normalised).

    ``text`` takes everything after it; every other field takes its first word.
    """
    standard = _STANDARD.fullmatch(text)
    if standard is not None:
        return {k: v for k, v in zip(_STANDARD_KEYS, standard.groups(), strict=True)
                if v is not None}
    return _parse_text_general(text)


def _parse_text_general(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    matches = list(_KEY_RE.finditer(text))
    for index, match in enumerate(matches):
        key = match.group(1).lower()
        if key.startswith("submit"):
            key = "submit date"
        elif key.startswith("done"):
            key = "done date"
        if key == "text":
            fields.setdefault(key, text[match.end() :])
            break
        stop = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        words = text[match.end() : stop].split()
        if words:
            fields.setdefault(key, words[0])
    return fields


def _clean_raw(raw: str | bytes) -> str:
    value = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    return value.replace("\x00", "").strip()


def parse_receipt(
    short_message: bytes,
    *,
    receipted_message_id: str | bytes | None = None,
    message_state: int | None = None,
) -> Receipt | None:
    """Parse a deliver_sm receipt; ``None`` when neither an id nor a state can be found.

    A receipt with an id but no state anywhere gets state UNKNOWN. A ``message_state`` TLV
    with a value outside 1..8 is ignored in favour of the text.
    """
    fields = _parse_text(short_message.decode("latin-1").rstrip("\x00"))

    tlv_id = _clean_raw(receipted_message_id) if receipted_message_id is not None else ""
    text_id = fields.get("id", "")
    message_id = tlv_id or text_id

    tlv_state = MESSAGE_STATE_TLV.get(message_state) if message_state is not None else None
    text_stat = fields.get("stat")
    state: ReceiptState | None = tlv_state
    if state is None and text_stat is not None:
        state = state_from_text(text_stat)

    if not message_id and state is None:
        return None

    id_source = "tlv" if tlv_id else "text" if text_id else None
    state_source = "tlv" if tlv_state is not None else "text" if text_stat is not None else None
    sources = {src for src in (id_source, state_source) if src is not None}
    source = "tlv+text" if len(sources) == 2 else sources.pop()

    return Receipt(
        message_id=message_id,
        state=state if state is not None else ReceiptState.UNKNOWN,
        error=fields.get("err"),
        submit_date=fields.get("submit date"),
        done_date=fields.get("done date"),
        text=fields.get("text"),
        source=source,
    )


def format_receipt_text(
    *,
    message_id: str,
    state: ReceiptState,
    submit_date: datetime,
    done_date: datetime,
    err: str = "000",
    text: str = "",
    submitted: int = 1,
    delivered: int | None = None,
) -> bytes:
    """Classic SMPP 3.4 Appendix B receipt text, latin-1 encoded (unmappable chars -> '?').

    ``delivered`` defaults to ``submitted`` for DELIVRD and 0 otherwise.
    """
    if delivered is None:
        delivered = submitted if state is ReceiptState.DELIVRD else 0
    body = (
        f"id:{message_id} sub:{submitted:03d} dlvrd:{delivered:03d}"
        f" submit date:{submit_date:%y%m%d%H%M} done date:{done_date:%y%m%d%H%M}"
        f" stat:{state.value} err:{err} text:{text[:20]}"
    )
    return body.encode("latin-1", errors="replace")


# --------------------------------------------------------------------------- message ids

_DECIMAL_DIGITS = frozenset("0123456789")
_HEX_DIGITS = frozenset("0123456789abcdef")
# SMPP message_id is at most 64 characters; longer values are not converted (this also keeps
# int <-> str conversion far below Python's digit limit).
_MAX_CONVERTIBLE_LEN = 64


def canonical_id(raw: str | bytes) -> str:
    """The form to store an SMSC message id under: stripped, lower case, no leading zeros."""
    value = _clean_raw(raw).lower()
    stripped = value.lstrip("0")
    if not stripped and value:
        return "0"
    return stripped


def id_candidates(raw: str | bytes) -> tuple[str, ...]:
    """Every canonical form the same SMSC id may have been stored under, canonical first.

    Adds the hexadecimal form when the id is decimal, and the decimal form when it is valid
    hexadecimal (an id of only decimal digits gets both). Empty input gives ``()``.
    """
    canonical = canonical_id(raw)
    if not canonical:
        return ()
    forms = [canonical]
    if len(canonical) <= _MAX_CONVERTIBLE_LEN:
        if set(canonical) <= _DECIMAL_DIGITS:
            forms.append(format(int(canonical, 10), "x"))
        if set(canonical) <= _HEX_DIGITS:
            forms.append(str(int(canonical, 16)))
    return tuple(dict.fromkeys(forms))
