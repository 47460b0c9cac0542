-- vacuum: reclaim the dead rows every claim and cleanup leaves behind.
--
-- takes    nothing
-- returns  nothing
--
-- Run after each cleanup by the session that holds the cleanup's turn. Every message is a
-- row inserted and deleted within seconds, so the tables bloat fast where autovacuum is
-- off or slow, and claims then wade through dead index entries. Best effort: an account
-- that does not own the tables gets a warning from the server, and nothing else happens.
VACUUM (SKIP_LOCKED) channel_layers_v2_messages, channel_layers_v2_groups
