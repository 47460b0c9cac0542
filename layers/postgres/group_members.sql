-- group_members: the current members of a group.
--
-- takes    prefix, group
-- returns  channel; one row a member whose membership has not lapsed
SELECT channel FROM channel_layers_v1_groups
WHERE prefix = %(prefix)s AND group_name = %(group)s AND expires_at > now()
