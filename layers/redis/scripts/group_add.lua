-- group_add: add (or refresh) a member of a group, scored by the server time of joining.
--
-- KEYS[1]  the group's sorted set
-- ARGV[1]  the channel name
-- ARGV[2]  group_expiry in milliseconds
-- returns  1
--
-- Server time, so that memberships added from different machines lapse together.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
return 1
