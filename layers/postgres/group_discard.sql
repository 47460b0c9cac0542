-- group_discard: remove a channel from a group (nothing if it is not a member).
--
-- takes    prefix, group, channel
-- returns  nothing
DELETE FROM channel_layers_v2_groups
WHERE prefix = %(prefix)s AND group_name = %(group)s AND channel = %(channel)s
