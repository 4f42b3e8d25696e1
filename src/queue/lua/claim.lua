-- claim: takes up to ARGV[3] tasks, the ready list first (tasks whose turn on a resource came),
-- then the queue lists in claim order, and gives each attempt a fencing token and a lease.
-- KEYS[1..12]: queue state (common.lua); KEYS[13..]: queue lists in claim order.
-- ARGV[1]: worker id, ARGV[2]: lease (ms), ARGV[3]: most tasks to take.
-- Returns a flat array: handle, fence, origin list, body, for each task taken.
local worker, lease, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
local function take(handle, list, body)
  local fence = redis.call('INCR', FENCE)
  redis.call('HSET', CLAIMS, handle, fence .. '|' .. now .. '|' .. worker)
  redis.call('ZADD', LEASES, now + lease, handle)
  -- NX: a claim recovered before it began keeps its place in its resource's order.
  redis.call('ZADD', UNBEGUN, 'NX', fence, handle)
  out[#out + 1] = handle
  out[#out + 1] = tostring(fence)
  out[#out + 1] = list
  out[#out + 1] = body
end
while #out < want * 4 do
  local h = redis.call('LPOP', READY)
  if not h then break end
  local body, list = redis.call('HGET', BODIES, h), redis.call('HGET', ORIGIN, h)
  -- A live claim means it is in flight already (fence '0' marks a claim recovered before it began).
  local f = claim_fence(h)
  if body and list and (not f or f == '0') then take(h, list, body) end
end
for i = 13, #KEYS do
  while #out < want * 4 do
    local body = redis.call('RPOP', KEYS[i])
    if not body then break end
    local ok, t = pcall(cjson.decode, body)
    local handle = ''
    if ok and type(t) == 'table' and type(t.id) == 'string' and #t.id > 0 and #t.id <= 200 then
      handle = t.id
    end
    if handle == '' or redis.call('HEXISTS', BODIES, handle) == 1 then
      -- No id, or a second copy of a task already out of its list: a handle of its own.
      handle = handle .. '~' .. (tonumber(redis.call('GET', FENCE) or '0') + 1)
    end
    redis.call('HSET', BODIES, handle, body)
    redis.call('HSET', ORIGIN, handle, KEYS[i])
    take(handle, KEYS[i], body)
  end
end
return out
