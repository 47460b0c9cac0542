-- group_send: append one message to several lists of one shard, skipping full ones.
--
-- KEYS     the lists (channel lists, or shared lists of process-local channels)
-- ARGV[1]  expiry in milliseconds
-- ARGV[2]  the encoded message
-- ARGV[1 + 2i], ARGV[2 + 2i]  for KEYS[i]: its capacity, and the member channel name(s)
--          the entry carries, comma-separated (all members one process reads share one
--          entry)
-- returns  how many lists received the message
--
-- A full list misses this message and the others still get theirs: group_send never
-- raises ChannelFull.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expiry = tonumber(ARGV[1])
local prefix = string.format('%d:', now + expiry)
local payload = ARGV[2]
local pushed = 0

for i, key in ipairs(KEYS) do
    local capacity = tonumber(ARGV[1 + 2 * i])
    local room = redis.call('LLEN', key) < capacity
    if not room then
        while true do
            local head = redis.call('LINDEX', key, 0)
            if not head then break end
            local expires = tonumber(string.match(head, '^(%d+):'))
            if expires and expires > now then break end
            redis.call('LPOP', key)
        end
        room = redis.call('LLEN', key) < capacity
    end
    if room then
        redis.call('RPUSH', key, prefix .. ARGV[2 + 2 * i] .. ':' .. payload)
        redis.call('PEXPIRE', key, expiry + 1000)
        pushed = pushed + 1
    end
end
return pushed
