-- claim: take up to `limit` unexpired messages of some queues, oldest first.
--
-- takes    prefix, queues (text[]), limit
-- returns  id, queue, channel, seconds left before expiry, payload; one row a message
--
-- FOR UPDATE SKIP LOCKED: concurrent claims never wait on each other and never take the
-- same row; the DELETE makes the claim final (at most once). limit is 1 per waiting
-- receiver of an ordinary channel (fair to receivers elsewhere) and a batch for an
-- instance's own process-local queue (it has one reader).
DELETE FROM channel_layers_v1_messages
WHERE id IN (
    SELECT id FROM channel_layers_v1_messages
    WHERE prefix = %(prefix)s AND queue = ANY(%(queues)s) AND expires_at > now()
    ORDER BY id
    FOR UPDATE SKIP LOCKED
    LIMIT %(limit)s
)
RETURNING id, queue, channel, extract(epoch FROM expires_at - now())::float8, payload
