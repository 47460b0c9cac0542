-- cleanup: delete a batch of expired messages and lapsed memberships, of every prefix.
--
-- takes    lock (the advisory lock key), batch (rows per table at most)
-- returns  one row: messages deleted, memberships deleted
--
-- Runs in the background of every layer, but only one session at a time does the work:
-- the others find the transaction-scoped advisory lock taken and delete nothing. Receivers
-- never return expired rows, so this only keeps the tables from growing.
WITH lock AS (
    SELECT pg_try_advisory_xact_lock(%(lock)s) AS held
), expired AS (
    DELETE FROM channel_layers_v2_messages
    WHERE id IN (
        SELECT id FROM channel_layers_v2_messages
        WHERE expires_at <= now() AND (SELECT held FROM lock)
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
), lapsed AS (
    DELETE FROM channel_layers_v2_groups
    WHERE ctid IN (
        SELECT ctid FROM channel_layers_v2_groups
        WHERE expires_at <= now() AND (SELECT held FROM lock)
        LIMIT %(batch)s
    )
    RETURNING 1
)
SELECT (SELECT count(*) FROM expired), (SELECT count(*) FROM lapsed)
