-- expired: lists claims whose lease ran out (no SCAN: one range of the leases set).
-- KEYS[1..12]: queue state (common.lua). ARGV[1]: most entries.
-- Returns a flat array: handle, fence, origin list, body, for each.
local out = {}
local due = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
for _, h in ipairs(due) do
  out[#out + 1] = h
  out[#out + 1] = claim_fence(h) or '0'
  out[#out + 1] = redis.call('HGET', ORIGIN, h) or ''
  out[#out + 1] = redis.call('HGET', BODIES, h) or ''
end
return out
