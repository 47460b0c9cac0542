-- receive_many: atomically pop the first unexpired entry from the first list that has one.
--
-- KEYS     the lists, in the order the caller listed its channels
-- ARGV     none
-- returns  {key, entry} or nil when every list is empty
--
-- Expired entries met on the way are dropped. Used where one blocking pop cannot cover all
-- the lists (channels on several shards), so that a message already waiting is taken
-- without racing pops on other shards.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

for _, key in ipairs(KEYS) do
    while true do
        local entry = redis.call('LPOP', key)
        if not entry then break end
        local expires = tonumber(string.match(entry, '^(%d+):'))
        if expires and expires > now then
            return {key, entry}
        end
    end
end
return nil
