-- send_batch: insert several messages in one statement, each unless its channel is full,
-- and wake each destination's readers once.
--
-- takes    prefix, expiry (seconds); queues, channels, capacities, payloads, listens
--          (arrays, one entry a message, in the order they were sent)
-- returns  one row a message, in the given order: true if inserted, false if its channel
--          was full
--
-- What concurrent sends of one process share (layers/postgres/sends.py): one round trip
-- and one commit, so also one turn at the lock every NOTIFY takes at commit. A message
-- counts the channel's stored messages plus the ones ahead of it in this batch; messages
-- to one channel keep their order (ids are drawn in `ord` order).
WITH batch AS (
    SELECT b.ord, b.queue, b.channel, b.capacity, b.payload, b.listen,
           row_number() OVER (PARTITION BY b.queue, b.channel ORDER BY b.ord) AS nth
    FROM unnest(%(queues)s::text[], %(channels)s::text[], %(capacities)s::int[],
                %(payloads)s::bytea[], %(listens)s::text[])
         WITH ORDINALITY AS b(queue, channel, capacity, payload, listen, ord)
), room AS (
    SELECT batch.*,
           (
               SELECT count(*) FROM (
                   SELECT 1 FROM channel_layers_v2_messages AS held
                   WHERE held.prefix = %(prefix)s AND held.queue = batch.queue
                     AND held.channel = batch.channel AND held.expires_at > now()
                   LIMIT batch.capacity
               ) AS counted
           ) + batch.nth <= batch.capacity AS fits
    FROM batch
), inserted AS (
    INSERT INTO channel_layers_v2_messages (prefix, queue, channel, expires_at, payload)
    SELECT %(prefix)s, room.queue, room.channel,
           now() + %(expiry)s * interval '1 second', room.payload
    FROM room WHERE room.fits
    ORDER BY room.ord
), woken AS (
    SELECT pg_notify(w.listen, w.queue)
    FROM (SELECT DISTINCT room.listen, room.queue FROM room WHERE room.fits) AS w
)
SELECT room.fits FROM room, (SELECT count(*) FROM woken) AS notified
ORDER BY room.ord
