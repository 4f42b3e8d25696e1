-- promote: moves due delayed tasks on: a lock holder to the ready list, any other task's body to
-- the pop end of its list (which must be among KEYS; others are left and named in the reply).
-- KEYS[1..12]: queue state (common.lua); KEYS[13..]: the queue lists.
-- ARGV[1]: most tasks to move.
-- Returns {moved, ms until the next due task (-1 when none), unknown lists...}.
local now = now_ms()
local known = {}
for i = 13, #KEYS do known[KEYS[i]] = true end
local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
local unknown = {}
for _, h in ipairs(due) do
  local list = redis.call('HGET', ORIGIN, h)
  if redis.call('HEXISTS', HELD, h) == 1 then
    redis.call('ZREM', DELAYED, h)
    redis.call('RPUSH', READY, h)
    moved = moved + 1
  elseif list and known[list] then
    redis.call('ZREM', DELAYED, h)
    requeue(h, list)
    moved = moved + 1
  elseif list then
    unknown[#unknown + 1] = list
  end
end
local nxt = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
local out = {moved, wait}
for _, l in ipairs(unknown) do out[#out + 1] = l end
return out
