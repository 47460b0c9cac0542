-- send: insert one message unless its channel already holds `capacity` unexpired ones,
-- and wake the channel's readers.
--
-- takes    prefix, queue, channel, expiry (seconds), payload, capacity,
--          listen (the NOTIFY channel its readers LISTEN on), key (the NOTIFY payload)
-- returns  one row: 1 if inserted, 0 if the channel is full
--
-- The NOTIFY is a hint carrying only the queue's name; it is sent in the same transaction
-- as the insert, so a reader woken by it finds the row.
WITH inserted AS (
    INSERT INTO channel_layers_v2_messages (prefix, queue, channel, expires_at, payload)
    SELECT %(prefix)s, %(queue)s, %(channel)s,
           now() + %(expiry)s * interval '1 second', %(payload)s
    WHERE (
        SELECT count(*) FROM (
            SELECT 1 FROM channel_layers_v2_messages
            WHERE prefix = %(prefix)s AND queue = %(queue)s AND channel = %(channel)s
              AND expires_at > now()
            LIMIT %(capacity)s
        ) AS held
    ) < %(capacity)s
    RETURNING 1
), woken AS (
    SELECT pg_notify(%(listen)s, %(key)s) FROM inserted
)
SELECT (SELECT count(*) FROM inserted) + 0 * (SELECT count(*) FROM woken)
