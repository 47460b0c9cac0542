-- schema: the tables and indexes every PostgresChannelLayer uses; idempotent.
--
-- takes    nothing (run inside a transaction holding the schema advisory lock, so that
--          processes starting together do not race on CREATE ... IF NOT EXISTS)
-- returns  nothing
--
-- Object names carry the layout version (v2): a later layout gets names of its own beside
-- these, never an in-place change. The tables skip the write-ahead log (faster, and
-- emptied after a server crash, which at-most-once delivery allows) unless the layer is
-- durable: sql.py then creates ordinary logged tables. The first layer to create them
-- decides.
CREATE UNLOGGED TABLE IF NOT EXISTS channel_layers_v2_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix text NOT NULL,
    -- the channel, or for a process-local channel its owner instance's queue ("instance!")
    queue text NOT NULL,
    channel text NOT NULL,
    expires_at timestamptz NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS channel_layers_v2_messages_queue
    ON channel_layers_v2_messages (prefix, queue, id);
-- The capacity check counts one channel's messages; the process-local channels of one
-- instance share a queue, so the queue index alone would scan all of them per member.
CREATE INDEX IF NOT EXISTS channel_layers_v2_messages_channel
    ON channel_layers_v2_messages (prefix, channel);
-- No index on expires_at: only the cleanup looks for expired rows, every
-- cleanup_interval, and a scan of a table of in-flight messages then costs less than one
-- more index entry on every insert (a quarter of the index work of a group_send).

CREATE UNLOGGED TABLE IF NOT EXISTS channel_layers_v2_groups (
    prefix text NOT NULL,
    group_name text NOT NULL,
    channel text NOT NULL,
    -- where a message to the channel goes, and the NOTIFY channel that wakes its readers:
    -- written by group_add, so group_send needs nothing from the client but the message
    queue text NOT NULL,
    listen text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (prefix, group_name, channel)
);
CREATE INDEX IF NOT EXISTS channel_layers_v2_groups_expiry
    ON channel_layers_v2_groups (expires_at);
