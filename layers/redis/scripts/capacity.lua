-- capacity: helpers prepended to the scripts that check a list's capacity (send,
-- group_send); not an operation of its own.
--
-- drop_expired(key, now): pops expired entries off the head of a list. Entries on one list
-- share one lifetime, so the expired ones are all at the head.
local function drop_expired(key, now)
    while true do
        local head = redis.call('LINDEX', key, 0)
        if not head then return end
        local expires = tonumber(string.match(head, '^(%d+):'))
        if expires and expires > now then return end
        redis.call('LPOP', key)
    end
end

-- is_local(key): whether a list is shared by process-local channels: its name ends in '!'
-- ('!}' with a cluster's hash tag, '<prefix>:c:{specific.abc!}').
local function is_local(key)
    return string.sub(key, -1) == '!' or string.sub(key, -2) == '!}'
end

-- count_entries(key, counts): for a list shared by many process-local channels, adds to
-- counts[name] the number of entries naming each channel already in `counts`, and returns
-- `counts`. Called only once the list is as long as a channel's capacity: capacity is per
-- channel, so the length of the shared list alone cannot say that one channel is full.
local function count_entries(key, counts)
    for _, entry in ipairs(redis.call('LRANGE', key, 0, -1)) do
        local names = string.match(entry, '^%d+:([^:]*):')
        if names then
            for name in string.gmatch(names, '[^,]+') do
                if counts[name] then counts[name] = counts[name] + 1 end
            end
        end
    end
    return counts
end

