"""Records and status enums shared by every layer."""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    """Life cycle of one SMS in the ledger."""

    HELD = "held"  # stored, not to be sent yet (campaign not running, or deferred by a rule)
    QUEUED = "queued"  # accepted, waiting for a send slot
    SUBMITTING = "submitting"  # claimed by a sender; submit_sm may be on the wire
    SUBMITTED = "submitted"  # every part acknowledged by the SMSC (submit_sm_resp ROK)
    DELIVERED = "delivered"  # every part has a DELIVRD receipt
    UNDELIVERED = "undelivered"  # a receipt said UNDELIV / REJECTD / DELETED / UNKNOWN
    EXPIRED = "expired"  # a receipt said EXPIRED
    REJECTED = "rejected"  # the SMSC refused the submit_sm with a permanent status
    FAILED = "failed"  # we gave up (retries exhausted, ambiguous policy = give up, ...)
    CANCELLED = "cancelled"  # withdrawn while still queued (e.g. advertising after a refusal)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERED,
        MessageStatus.EXPIRED,
        MessageStatus.REJECTED,
        MessageStatus.FAILED,
        MessageStatus.CANCELLED,
    }
)


class MessageClass(StrEnum):
    """Legal class of a message (Decree 91/2020)."""

    CARE = "care"  # customer care / transactional: not advertising
    ADVERTISING = "advertising"  # needs [QC], refusal text, time window, caps


class Encoding(StrEnum):
    """Alphabet a message is sent in."""

    GSM7 = "gsm7"  # GSM 03.38 default alphabet, data_coding 0
    UCS2 = "ucs2"  # UCS-2 / UTF-16BE, data_coding 8


class Priority:
    """Numeric priorities; lower runs first."""

    TRANSACTIONAL = 0
    CARE = 1
    BULK = 5


#: Longest message accepted, in segments (a longer text is refused, not truncated).
MAX_SEGMENTS = 10
