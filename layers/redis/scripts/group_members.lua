-- group_members: drop lapsed members of a group and return the rest.
--
-- KEYS[1]  the group's sorted set
-- ARGV[1]  group_expiry in milliseconds
-- returns  the member channel names joined by ',' (empty when none): one string parses
--          much faster in the client than one reply element per member
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return table.concat(redis.call('ZRANGE', KEYS[1], 0, -1), ',')
