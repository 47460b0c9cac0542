-- claim: take up to `limit` unexpired messages of some queues, oldest first.
--
-- takes    prefix, queues (text[]), limit
-- returns  id, queue, channel, seconds left before expiry, payload; one row a message
--
-- FOR UPDATE SKIP LOCKED: concurrent claims never wait on each other and never take the
-- same row; the DELETE makes the claim final (at most once). limit is 1 per waiting
-- receiver of an ordinary channel (fair to receivers elsewhere) and a batch for an
-- instance's own process-local queue (it has one reader).
--
-- Seconds left as a difference of epochs, not of timestamps: a row whose expires_at is
-- 'infinity' (none a layer writes) made "cannot subtract infinite timestamps" fail every
-- claim of its queue, for good.
--
-- One index scan per queue, each already in id order: `queue = ANY(...)` would read and
-- sort every row of the queues to find the first (the plan PostgreSQL before 17 makes).
-- With several queues each may lock up to `limit` rows it does not take; they are free
-- again when the statement ends.
DELETE FROM channel_layers_v2_messages
WHERE id IN (
    SELECT head.id
    FROM unnest(%(queues)s::text[]) AS q(queue)
    CROSS JOIN LATERAL (
        SELECT id FROM channel_layers_v2_messages AS m
        WHERE m.prefix = %(prefix)s AND m.queue = q.queue AND m.expires_at > now()
        ORDER BY m.id
        FOR UPDATE SKIP LOCKED
        LIMIT %(limit)s
    ) AS head
    ORDER BY head.id
    LIMIT %(limit)s
)
RETURNING id, queue, channel, (extract(epoch FROM expires_at) - extract(epoch FROM now()))::float8, payload
