-- group_send: append one message to several lists of one shard, skipping full ones.
--
-- KEYS     the lists (channel lists, or shared lists of process-local channels)
-- ARGV[1]  expiry in milliseconds
-- ARGV[2]  the encoded message
-- ARGV[1 + 2i], ARGV[2 + 2i]  for KEYS[i]: its capacity, and the member channel name(s)
--          the entry carries, comma-separated (all members one process reads share one
--          entry)
-- returns  how many lists received the message
-- uses     drop_expired, count_entries (capacity.lua, prepended by scripts.py)
--
-- In a list shared by process-local channels (key ending in '!') a full member is left
-- out of the entry and the others still get it: capacity is per channel.
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
    local names = ARGV[2 + 2 * i]
    local room = redis.call('LLEN', key) < capacity
    if not room then
        drop_expired(key, now)
        room = redis.call('LLEN', key) < capacity
        if not room and is_local(key) then
            local counts = {}
            for name in string.gmatch(names, '[^,]+') do counts[name] = 0 end
            count_entries(key, counts)
            local open = {}
            for name in string.gmatch(names, '[^,]+') do
                if counts[name] < capacity then table.insert(open, name) end
            end
            names = table.concat(open, ',')
            room = #open > 0
        end
    end
    if room then
        redis.call('RPUSH', key, prefix .. names .. ':' .. payload)
        redis.call('PEXPIRE', key, expiry + 1000)
        pushed = pushed + 1
    end
end
return pushed
