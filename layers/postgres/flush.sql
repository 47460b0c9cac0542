-- flush: remove every message and membership under one prefix, and nothing else.
--
-- takes    prefix
-- returns  one row: how many messages went
WITH memberships AS (
    DELETE FROM channel_layers_v2_groups WHERE prefix = %(prefix)s
)
DELETE FROM channel_layers_v2_messages WHERE prefix = %(prefix)s
