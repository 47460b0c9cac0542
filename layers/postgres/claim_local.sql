-- claim_local: read the next messages of this instance's process-local queue, and delete
-- the ones an earlier call read and this instance has since filed.
--
-- takes    prefix, queues (text[]: this instance's local queues), limit,
--          done (bigint[]: ids read and filed before, still to delete)
-- returns  id, queue, channel, seconds left before expiry, payload; one row a message
--
-- Read first and deleted by the next call, unlike claim.sql: only this instance reads
-- these queues, and every event loop that async_to_sync closes cancels the loop reading
-- them, often mid-statement. A cancelled read loses nothing (the rows stay and are read
-- again); a cancelled delete is repeated (the ids stay in `done`). Rows in `done` are
-- left out of the read because every part of one statement sees the same snapshot.
WITH deleted AS (
    DELETE FROM channel_layers_v1_messages WHERE id = ANY(%(done)s)
)
SELECT id, queue, channel, extract(epoch FROM expires_at - now())::float8, payload
FROM channel_layers_v1_messages
WHERE prefix = %(prefix)s AND queue = ANY(%(queues)s) AND expires_at > now()
  AND id <> ALL(%(done)s)
ORDER BY id
LIMIT %(limit)s
