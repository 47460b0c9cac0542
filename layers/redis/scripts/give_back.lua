-- give_back: return entries popped for nobody to the head of their list, in order.
--
-- KEYS[1]  the list they were popped from
-- ARGV     the entries, oldest first, exactly as popped
-- returns  how many went back (expired ones are dropped instead)
--
-- A receive loop pops only for receivers that wait; when they leave before the pop
-- returns (and the pop could not be interrupted), its entries come back here, ahead of
-- anything sent since, so another receiver still gets them and in order.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local key = KEYS[1]
local latest = 0
local back = 0

for i = #ARGV, 1, -1 do
    local expires = tonumber(string.match(ARGV[i], '^(%d+):'))
    if expires and expires > now then
        redis.call('LPUSH', key, ARGV[i])
        if expires > latest then latest = expires end
        back = back + 1
    end
end
-- The list may have expired while its entries were away: it must not outlive them by less.
if back > 0 and redis.call('PTTL', key) < latest - now + 1000 then
    redis.call('PEXPIRE', key, latest - now + 1000)
end
return back
