-- expired: lists claims whose lease ran out (no SCAN: one range of the leases set), and forgets
-- claims recovered before they began that nobody claimed again for ARGV[2] ms (e.g. their list is
-- no longer consumed), so the tasks blocked behind them go on.
-- KEYS[1..12]: queue state (common.lua). ARGV[1]: most entries, ARGV[2]: that time (ms).
-- Returns a flat array: handle, fence, origin list, body, for each.
local now, gc = now_ms(), tonumber(ARGV[2])
local freed = false
for _, h in ipairs(redis.call('ZRANGE', UNBEGUN, 0, 63)) do
  local c = redis.call('HGET', CLAIMS, h)
  local f, at = nil, 0
  if c then f, at = string.match(c, '^(%d+)|(%d+)|') end
  if not c or (f == '0' and now - tonumber(at) >= gc) then
    redis.call('ZREM', UNBEGUN, h)
    freed = true
  end
end
if freed then unblock() end
local out = {}
local due = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, h in ipairs(due) do
  out[#out + 1] = h
  out[#out + 1] = claim_fence(h) or '0'
  out[#out + 1] = redis.call('HGET', ORIGIN, h) or ''
  out[#out + 1] = redis.call('HGET', BODIES, h) or ''
end
return out
