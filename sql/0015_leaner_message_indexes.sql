-- 0015: leaner indexes on messages for large campaigns.
--
-- A campaign upload COPYs its messages in status 'held' and a running campaign moves each one
-- through five statuses: every index entry costs Postgres time on both. The sweeper's index
-- only needs rows that may be stuck (queued, submitting, submitted); held and final rows no
-- longer go in it. A refusal (TC) cancels the number's *queued* advertising through its
-- index; held campaign messages to that number are cancelled by the consent check right
-- before their submit (gateway/adguard.py), so they need no entry either.

DROP INDEX messages_status_updated_idx;
CREATE INDEX messages_in_flight_idx ON messages (status, updated_at)
    WHERE status IN ('queued', 'submitting', 'submitted');

DROP INDEX messages_pending_advertising_idx;
CREATE INDEX messages_queued_advertising_idx ON messages (msisdn)
    WHERE status = 'queued' AND class = 'advertising';
