"""Postgres persistence: migrations, the message ledger and API keys. All SQL lives here."""

from __future__ import annotations

from gateway.store.apikeys import ApiKey, ApiKeyStore
from gateway.store.messages import (
    MessageEvent,
    MessageRecord,
    MessageStore,
    NewMessage,
    ReceiptOutcome,
    ReceiptUpdate,
    SubmitResult,
)
from gateway.store.migrate import MigrationError, migrate, migrate_dsn

__all__ = [
    "ApiKey",
    "ApiKeyStore",
    "MessageEvent",
    "MessageRecord",
    "MessageStore",
    "MigrationError",
    "NewMessage",
    "ReceiptOutcome",
    "ReceiptUpdate",
    "SubmitResult",
    "migrate",
    "migrate_dsn",
]
