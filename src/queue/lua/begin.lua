-- begin: starts the claimed tasks of one batch, in fence order, each in one step: checks the
-- fence, drops a copy of a finished task, keeps the enqueue order of a resource (blocks while an
-- older claim has not begun yet, then parks behind the lock's holder), settles idempotency keys,
-- takes the lock, counts the attempt and records "processing" with its event.
-- KEYS[1..12]: queue state (common.lua); then per task: its hash `task:<id>`, its idempotency
-- record (the task hash again when it has no key).
-- ARGV[1]: how long (ms) a claim recovered before it began still holds younger tasks back,
-- ARGV[2]: idempotency wait bound (ms), ARGV[3]: idempotency TTL (s); then per task: handle,
-- fence, resource ('' for none), task id, max attempts, waiting message, n, then n record
-- arguments (`progress::record_args`, attempts as the placeholder).
-- Returns per task {verdict, a, b}: run (attempts, cancel flag), exhausted (attempts), parked
-- (holder), blocked, finished (status), superseded, duplicate (first id, its result), idem_wait (first
-- id), broken (the task hash or idempotency record is not a hash: Redis refuses to record it).
local gc, idem_wait, idem_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
local ai = 4
local function begin_one(hkey, ikey, handle, fence, res, id, max, waiting_msg, rec)
  if claim_fence(handle) ~= fence then return {'superseded', '', ''} end
  local kind = redis.call('TYPE', hkey).ok
  if (kind ~= 'hash' and kind ~= 'none') or (ikey ~= hkey and redis.call('TYPE', ikey).ok ~= 'hash'
      and redis.call('TYPE', ikey).ok ~= 'none') then
    redis.call('ZREM', UNBEGUN, handle)
    return {'broken', kind, ''}
  end
  local status = redis.call('HGET', hkey, 'status')
  if status == 'completed' or status == 'failed' or status == 'cancelled' then
    drop_claim(handle)
    release(handle)
    forget(handle)
    return {'finished', status, ''}
  end
  local order = tonumber(redis.call('ZSCORE', UNBEGUN, handle) or fence)
  if res ~= '' and redis.call('HGET', LOCKS, res) ~= handle and older_pending(order, now, gc) then
    -- Blocked: out of flight until the older claims begin (it keeps its order).
    redis.call('ZADD', WAITING, 0, '\0' .. string.format('%020d', order) .. '\0' .. handle)
    redis.call('HSET', CLAIMS, handle, '0|' .. now .. '|')
    redis.call('ZREM', LEASES, handle)
    return {'blocked', '', ''}
  end
  if redis.call('ZREM', UNBEGUN, handle) == 1 then unblock() end
  if ikey ~= hkey then
    local first = redis.call('HGET', ikey, 'id')
    if first and first ~= id then
      local st = redis.call('HGET', ikey, 'status') or ''
      if st == 'completed' then
        return {'duplicate', first, redis.call('HGET', ikey, 'result') or ''}
      end
      local since = tonumber(redis.call('HGET', ikey, 'since') or '0') or 0
      if st == '' and now - since < idem_wait then return {'idem_wait', first, ''} end
    end
    if first ~= id then
      redis.call('DEL', ikey)
      redis.call('HSET', ikey, 'id', id, 'since', now)
    end
    redis.call('EXPIRE', ikey, idem_ttl)
  end
  if res ~= '' then
    local holder = redis.call('HGET', LOCKS, res)
    if holder and holder ~= handle then
      redis.call('HSET', hkey, 'status', 'queued', 'message', waiting_msg)
      redis.call('ZADD', WAITING, 0, res .. '\0' .. string.format('%020d', order) .. '\0' .. handle)
      redis.call('HDEL', CLAIMS, handle)
      redis.call('ZREM', LEASES, handle)
      return {'parked', holder, ''}
    end
    redis.call('HSET', LOCKS, res, handle)
    redis.call('HSET', HELD, handle, res)
  end
  local n = redis.call('HINCRBY', hkey, 'attempts', 1)
  if n > tonumber(max) then return {'exhausted', tostring(n), ''} end
  record(hkey, patch(rec, n))
  return {'run', tostring(n), redis.call('HGET', hkey, 'cancel_requested') or ''}
end
for t = 1, (#KEYS - 12) / 2 do
  local hkey, ikey = KEYS[11 + 2 * t], KEYS[12 + 2 * t]
  local handle, fence, res, id, max, msg = ARGV[ai], ARGV[ai + 1], ARGV[ai + 2], ARGV[ai + 3], ARGV[ai + 4], ARGV[ai + 5]
  local n = tonumber(ARGV[ai + 6])
  local rec = {}
  for i = 1, n do rec[i] = ARGV[ai + 6 + i] end
  ai = ai + 7 + n
  out[t] = begin_one(hkey, ikey, handle, fence, res, id, max, msg, rec)
end
return out
