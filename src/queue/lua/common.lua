-- Shared by every queue script (prepended after the `#!lua` line). KEYS[1..12] are always the
-- fixed state keys of `keys::QUEUE_STATE`, in this order:
--   1 claims   (hash handle -> "fence|claimed_ms|worker")   2 leases (zset handle -> deadline ms)
--   3 unbegun  (zset handle -> order: first claim's fence)   4 bodies (hash handle -> body)
--   5 origin   (hash handle -> list)                         6 locks  (hash resource -> handle)
--   7 held     (hash handle -> resource)                     8 waiting (zset "res\0order\0handle")
--   9 ready    (list of handles)                            10 delayed (zset handle -> due ms)
--  11 dead-letter list                                      12 fence counter
-- Scripts write the task's own hash first: a WRONGTYPE there fails the script before it moved
-- anything (Redis does not roll back a script's earlier writes).
local CLAIMS, LEASES, UNBEGUN, BODIES, ORIGIN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local LOCKS, HELD, WAITING, READY, DELAYED = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local DEAD, FENCE = KEYS[11], KEYS[12]

-- Batched writes. A tick touches the shared hashes and sets above once or twice per task; with
-- `batching` on, those writes are collected per phase and sent as one variadic command per key
-- by `flush()` (each command costs Redis a call and an AOF record, whatever its size). Reads of
-- the claims see the writes not sent yet through `claim_view` (false: dropped). Every phase of a
-- tick ends with a flush, so no later phase reads what a pending write would change.
local batching = false
local pending, pending_order, claim_view, fence_base, fence_taken = {}, {}, {}, nil, 0

-- op key [flag] a [b]: appends a (and b) to the pending `op key [flag]`, or runs it now when not
-- batching.
local function defer(op, key, flag, a, b)
  if not batching then
    if flag and b ~= nil then return redis.call(op, key, flag, a, b) end
    if b ~= nil then return redis.call(op, key, a, b) end
    return redis.call(op, key, a)
  end
  local id = op .. ' ' .. key
  local d = pending[id]
  if not d then
    d = {op, key}
    if flag then d[3] = flag end
    pending[id] = d
    pending_order[#pending_order + 1] = id
  end
  d[#d + 1] = a
  if b ~= nil then d[#d + 1] = b end
end

-- The fence counter as this call sees it (the claims it made included).
local function next_fence()
  if not fence_base then fence_base = tonumber(redis.call('GET', FENCE) or '0') end
  return fence_base + fence_taken
end

local function flush()
  if fence_taken > 0 then
    redis.call('INCRBY', FENCE, fence_taken)
    fence_base, fence_taken = fence_base + fence_taken, 0
  end
  for _, id in ipairs(pending_order) do redis.call(unpack(pending[id])) end
  pending, pending_order = {}, {}
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The fence of handle's live claim (a string), or nil.
local function claim_fence(handle)
  local v = claim_view[handle]
  if v ~= nil then return v or nil end
  local c = redis.call('HGET', CLAIMS, handle)
  if not c then return nil end
  return string.match(c, '^(%d+)|')
end

-- Tasks blocked behind an older claim that had not begun yet live in the waiting set under the
-- empty resource ("\0<order>\0<handle>"); once some claim begins or leaves, they all go to the
-- ready list and begin again (blocked again if another older claim is still pending).
local function unblock()
  local blocked = redis.call('ZRANGEBYLEX', WAITING, '[\0', '[\1')
  for _, m in ipairs(blocked) do
    redis.call('ZREM', WAITING, m)
    redis.call('RPUSH', READY, string.sub(m, 23))
  end
end

-- Drops handle's claim. `begun`: it began (then it is not in the begin order any more).
local function drop_claim(handle, begun)
  if batching then claim_view[handle] = false end
  defer('HDEL', CLAIMS, nil, handle)
  defer('ZREM', LEASES, nil, handle)
  if not begun and redis.call('ZREM', UNBEGUN, handle) == 1 then unblock() end
end

-- Whether a claim older than `order` has not begun yet (it may be of the same resource). Live
-- claims always count (they begin, or expire and are recovered keeping their order); a claim
-- recovered before it began counts for `gc` ms after its recovery, after which it is forgotten.
local function older_pending(order, now, gc)
  local older = redis.call('ZRANGEBYSCORE', UNBEGUN, '-inf', '(' .. order, 'LIMIT', 0, 64)
  local pending = false
  for _, h in ipairs(older) do
    local c = redis.call('HGET', CLAIMS, h)
    local f, at = nil, 0
    if c then f, at = string.match(c, '^(%d+)|(%d+)|') end
    if c and (f ~= '0' or now - tonumber(at) < gc) then
      pending = true
    else
      redis.call('ZREM', UNBEGUN, h)
    end
  end
  return pending
end

local function forget(handle)
  defer('HDEL', BODIES, nil, handle)
  defer('HDEL', ORIGIN, nil, handle)
end

-- Releases the lock handle holds, if any, and hands it to the resource's first waiter (claim
-- order), which goes to the ready list holding the lock.
local function release(handle)
  local res = redis.call('HGET', HELD, handle)
  if not res then return end
  redis.call('HDEL', HELD, handle)
  if redis.call('HGET', LOCKS, res) ~= handle then return end
  local nxt = redis.call('ZRANGEBYLEX', WAITING, '[' .. res .. '\0', '[' .. res .. '\1', 'LIMIT', 0, 1)
  if #nxt == 0 then
    redis.call('HDEL', LOCKS, res)
    return
  end
  redis.call('ZREM', WAITING, nxt[1])
  local h = string.sub(nxt[1], #res + 23)
  redis.call('HSET', LOCKS, res, h)
  redis.call('HSET', HELD, h, res)
  redis.call('RPUSH', READY, h)
end

-- Puts an unclaimed handle back: a lock holder to the ready list (it keeps its turn), any other
-- task's body to the pop end of its list.
local function requeue(handle, list)
  if redis.call('HEXISTS', HELD, handle) == 1 then
    redis.call('RPUSH', READY, handle)
    return
  end
  local body = redis.call('HGET', BODIES, handle)
  if body then redis.call('RPUSH', list, body) end
  forget(handle)
end

-- Replaces the attempts placeholder (4294967295) in record arguments: the event (2), the message
-- (17) and the attempts field (21) are where `progress::record_args` puts it (they carry no
-- payload, so the number stands for nothing else).
local PLACEHOLDER, PATCHED = '4294967295', {2, 17, 21}
local function patch(a, attempts)
  local n = tostring(attempts)
  for _, i in ipairs(PATCHED) do
    local s = a[i]
    local at = s and string.find(s, PLACEHOLDER, 1, true)
    if at then
      local parts, from = {}, 1
      while at do
        parts[#parts + 1] = string.sub(s, from, at - 1)
        from = at + #PLACEHOLDER
        at = string.find(s, PLACEHOLDER, from, true)
      end
      parts[#parts + 1] = string.sub(s, from)
      a[i] = table.concat(parts, n)
    end
  end
  return a
end
