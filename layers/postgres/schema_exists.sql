-- schema_exists: whether every table and index of schema.sql is already there.
--
-- takes    nothing
-- returns  one row: true or false
--
-- Checked before any DDL: CREATE INDEX IF NOT EXISTS locks its table even when the index
-- exists, so running schema.sql on every start would stall (or deadlock with) the
-- instances already sending.
SELECT to_regclass('channel_layers_v2_messages') IS NOT NULL
   AND to_regclass('channel_layers_v2_messages_queue') IS NOT NULL
   AND to_regclass('channel_layers_v2_messages_channel') IS NOT NULL
   AND to_regclass('channel_layers_v2_groups') IS NOT NULL
   AND to_regclass('channel_layers_v2_groups_expiry') IS NOT NULL
