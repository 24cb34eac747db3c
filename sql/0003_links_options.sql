-- 0003: which SMSC link carried a message, per-message SMPP options, receipt expiry lookup.

ALTER TABLE messages ADD COLUMN link text NULL;
-- validity_s, registered_delivery, priority_flag, data_coding, source_ton, source_npi
ALTER TABLE messages ADD COLUMN options jsonb NOT NULL DEFAULT '{}'::jsonb;

-- The expiry sweeper looks for messages still waiting for receipts.
CREATE INDEX messages_awaiting_receipt_idx ON messages (submitted_at)
    WHERE status = 'submitted';

-- SMSC message ids are only unique per SMSC: receipts remember the link they came on.
ALTER TABLE pending_receipts ADD COLUMN link text NULL;
