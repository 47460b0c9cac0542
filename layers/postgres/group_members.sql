-- group_members: the current members of a group.
--
-- takes    prefix, group
-- returns  channel, queue, listen; one row a member whose membership has not lapsed
SELECT channel, queue, listen FROM channel_layers_v2_groups
WHERE prefix = %(prefix)s AND group_name = %(group)s AND expires_at > now()
