-- group_add: add a channel to a group, or refresh its membership.
--
-- takes    prefix, group, channel, queue (where its messages go), listen (the NOTIFY
--          channel of its readers), group_expiry (seconds)
-- returns  nothing
INSERT INTO channel_layers_v2_groups (prefix, group_name, channel, queue, listen, expires_at)
VALUES (%(prefix)s, %(group)s, %(channel)s, %(queue)s, %(listen)s,
        now() + %(group_expiry)s * interval '1 second')
ON CONFLICT (prefix, group_name, channel) DO UPDATE SET expires_at = EXCLUDED.expires_at
