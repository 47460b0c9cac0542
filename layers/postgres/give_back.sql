-- give_back: put back messages claimed for receivers that left before the claim returned.
--
-- takes    prefix, ids, queues, channels, lefts (seconds before expiry), payloads (arrays
--          of one length), listens, keys (the NOTIFYs that wake their readers)
-- returns  one row: how many went back
--
-- They keep their ids, so they are claimed ahead of everything sent since.
WITH restored AS (
    INSERT INTO channel_layers_v2_messages (id, prefix, queue, channel, expires_at, payload)
    OVERRIDING SYSTEM VALUE
    SELECT r.id, %(prefix)s, r.queue, r.channel, now() + r.left_s * interval '1 second',
           r.payload
    FROM unnest(%(ids)s::bigint[], %(queues)s::text[], %(channels)s::text[],
                %(lefts)s::float8[], %(payloads)s::bytea[])
         AS r(id, queue, channel, left_s, payload)
    WHERE r.left_s > 0
    RETURNING 1
), woken AS (
    SELECT pg_notify(w.listen, w.key)
    FROM unnest(%(listens)s::text[], %(keys)s::text[]) AS w(listen, key)
)
SELECT (SELECT count(*) FROM restored) + 0 * (SELECT count(*) FROM woken)
