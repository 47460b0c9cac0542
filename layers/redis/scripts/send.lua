-- send: append one message to a channel list, unless the list is at capacity.
--
-- KEYS[1]  the list (a channel, or the shared list of one instance's process-local channels)
-- ARGV[1]  expiry in milliseconds
-- ARGV[2]  capacity of the list
-- ARGV[3]  channel name(s) the entry carries, comma-separated
-- ARGV[4]  the encoded message
-- returns  1 if pushed, 0 if the channel is full
-- uses     drop_expired, count_entries (capacity.lua, prepended by scripts.py)
--
-- Entries are "<expires_ms>:<channels>:<payload>", expiry on the server clock so that
-- clients on different machines agree. Expired entries only need dropping when they would
-- cost a sender its capacity; receivers skip them anyway, and the key TTL ends the rest.
-- In a list shared by process-local channels (its key ends in '!') the channel's own
-- entries are counted, so other channels of the same instance never use up its capacity.
local key = KEYS[1]
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

if redis.call('LLEN', key) >= capacity then
    drop_expired(key, now)
    if redis.call('LLEN', key) >= capacity then
        if not is_local(key) then
            return 0
        end
        if count_entries(key, {[ARGV[3]] = 0})[ARGV[3]] >= capacity then
            return 0
        end
    end
end

local expiry = tonumber(ARGV[1])
redis.call('RPUSH', key, string.format('%d:', now + expiry) .. ARGV[3] .. ':' .. ARGV[4])
-- Every entry has the same lifetime, so the newest decides when the whole list is dead.
redis.call('PEXPIRE', key, expiry + 1000)
return 1
