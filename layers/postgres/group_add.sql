-- group_add: add a channel to a group, or refresh its membership.
--
-- takes    prefix, group, channel, group_expiry (seconds)
-- returns  nothing
INSERT INTO channel_layers_v1_groups (prefix, group_name, channel, expires_at)
VALUES (%(prefix)s, %(group)s, %(channel)s, now() + %(group_expiry)s * interval '1 second')
ON CONFLICT (prefix, group_name, channel) DO UPDATE SET expires_at = EXCLUDED.expires_at
