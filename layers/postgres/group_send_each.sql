-- group_send_each: one message to every member of a group that has room, in one
-- statement, each member with its own capacity (the client read them: group_members.sql).
--
-- takes    prefix, expiry (seconds), payload; queues, channels, capacities (arrays, one
--          entry a member); listens, keys, wake_queues (arrays, one entry a destination
--          queue: its NOTIFY channel and payload)
-- returns  one row: how many members got the message
--
-- A full member is skipped, never an error. One NOTIFY per destination queue that got a
-- message: members in one process share one queue, and so one wake-up.
WITH inserted AS (
    INSERT INTO channel_layers_v2_messages (prefix, queue, channel, expires_at, payload)
    SELECT %(prefix)s, m.queue, m.channel, now() + %(expiry)s * interval '1 second',
           %(payload)s
    FROM unnest(%(queues)s::text[], %(channels)s::text[], %(capacities)s::int[])
         AS m(queue, channel, capacity)
    WHERE (
        SELECT count(*) FROM (
            SELECT 1 FROM channel_layers_v2_messages AS held
            WHERE held.prefix = %(prefix)s AND held.queue = m.queue
              AND held.channel = m.channel AND held.expires_at > now()
            LIMIT m.capacity
        ) AS counted
    ) < m.capacity
    RETURNING queue
), woken AS (
    SELECT pg_notify(w.listen, w.key)
    FROM unnest(%(listens)s::text[], %(keys)s::text[], %(wake_queues)s::text[])
         AS w(listen, key, queue)
    WHERE w.queue IN (SELECT queue FROM inserted)
)
SELECT (SELECT count(*) FROM inserted) + 0 * (SELECT count(*) FROM woken)
