-- group_send: one message to every member of a group that has room, in one statement,
-- when every member has the same capacity (no channel_capacity pattern applies; else
-- group_send_each.sql).
--
-- takes    prefix, group, expiry (seconds), payload, capacity
-- returns  one row: how many members got the message
--
-- The members, where their messages go and whom to wake are read here, on the server:
-- one round trip, and nothing sent per member. A full member is skipped, never an error.
-- One NOTIFY per destination queue that got a message: members in one process share one
-- queue, and so one wake-up.
WITH members AS (
    SELECT g.channel, g.queue, g.listen
    FROM channel_layers_v2_groups AS g
    WHERE g.prefix = %(prefix)s AND g.group_name = %(group)s AND g.expires_at > now()
), inserted AS (
    INSERT INTO channel_layers_v2_messages (prefix, queue, channel, expires_at, payload)
    SELECT %(prefix)s, m.queue, m.channel, now() + %(expiry)s * interval '1 second',
           %(payload)s
    FROM members AS m
    WHERE (
        SELECT count(*) FROM (
            SELECT 1 FROM channel_layers_v2_messages AS held
            WHERE held.prefix = %(prefix)s AND held.queue = m.queue
              AND held.channel = m.channel AND held.expires_at > now()
            LIMIT %(capacity)s
        ) AS counted
    ) < %(capacity)s
    RETURNING queue
), woken AS (
    SELECT pg_notify(w.listen, w.queue)
    FROM (SELECT DISTINCT m.listen, m.queue FROM members AS m) AS w
    WHERE w.queue IN (SELECT queue FROM inserted)
)
SELECT (SELECT count(*) FROM inserted) + 0 * (SELECT count(*) FROM woken)
