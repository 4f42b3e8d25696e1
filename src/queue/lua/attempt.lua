-- The steps of one task's way through the hot path, composed by tick.lua: adopt a body popped
-- from its list, claim it (fencing token + lease), begin it, finish it. Prepended to every queue
-- script after common.lua and the record function; each returns what the caller reports.

-- Keeps a body popped from `list` out of its list under a handle: its id, or (no usable id, or a
-- second copy of a task already out of its list) a handle of its own. Returns the handle.
local adopted = {}
local function adopt(list, body)
  local ok, t = pcall(cjson.decode, body)
  local handle = ''
  if ok and type(t) == 'table' and type(t.id) == 'string' and #t.id > 0 and #t.id <= 200 then
    handle = t.id
  end
  if handle == '' or adopted[handle] or redis.call('HEXISTS', BODIES, handle) == 1 then
    handle = handle .. '~' .. (next_fence() + 1)
  end
  adopted[handle] = true
  defer('HSET', BODIES, nil, handle, body)
  defer('HSET', ORIGIN, nil, handle, list)
  return handle
end

-- Claims `handle` for `worker`: a fencing token from the counter and a lease. `ordered`: it enters
-- the begin order of resources (UNBEGUN; NX: a claim recovered before it began keeps its place);
-- a task begun in the same call without a resource makes nobody wait, so it skips that.
local function claim_one(handle, worker, lease, now, ordered)
  local fence = next_fence() + 1
  fence_taken = fence_taken + 1
  if batching then claim_view[handle] = tostring(fence) end
  defer('HSET', CLAIMS, nil, handle, fence .. '|' .. now .. '|' .. worker)
  defer('ZADD', LEASES, nil, now + lease, handle)
  if ordered then defer('ZADD', UNBEGUN, 'NX', fence, handle) end
  if not batching then flush() end
  return tostring(fence)
end

-- Begins one claimed task: checks the fence (unless `fresh`: claimed by this very call), drops a
-- copy of a finished task, keeps the enqueue order of a resource (blocks while an older claim has
-- not begun yet, then parks behind the lock's holder), settles idempotency keys, takes the lock,
-- counts the attempt and records "processing" with its event. hkey: its hash; ikey: its
-- idempotency record (hkey when it has none); gc: how long (ms) a claim recovered before it began
-- still holds younger tasks back; rec: the record arguments (attempts as the placeholder). The
-- task hash is read before anything is written for the task, so a hash of another type raises
-- WRONGTYPE (turned into this task's error by `guarded`) having changed nothing.
-- Returns {verdict, a, b}: run (attempts, cancel flag), exhausted (attempts), parked (holder),
-- blocked, finished (status), superseded, duplicate (first id, its result), idem_wait (first id).
local function begin_one(hkey, ikey, handle, fence, res, id, max, waiting_msg, rec, now, gc, idem_wait, idem_ttl, fresh)
  if not fresh and claim_fence(handle) ~= fence then return {'superseded', '', ''} end
  local cur = redis.call('HMGET', hkey, 'status', 'seq', 'cancel_requested', 'created_at', 'attempts')
  local status = cur[1]
  if status == 'completed' or status == 'failed' or status == 'cancelled' then
    drop_claim(handle, false)
    release(handle)
    forget(handle)
    return {'finished', status, ''}
  end
  local order = tonumber(fence)
  if res ~= '' then order = tonumber(redis.call('ZSCORE', UNBEGUN, handle) or fence) end
  if res ~= '' and redis.call('HGET', LOCKS, res) ~= handle and older_pending(order, now, gc) then
    -- Blocked: out of flight until the older claims begin (it keeps its order).
    redis.call('ZADD', UNBEGUN, 'NX', order, handle)
    redis.call('ZADD', WAITING, 0, '\0' .. string.format('%020d', order) .. '\0' .. handle)
    redis.call('HSET', CLAIMS, handle, '0|' .. now .. '|')
    redis.call('ZREM', LEASES, handle)
    if batching then claim_view[handle] = '0' end
    return {'blocked', '', ''}
  end
  -- A task claimed and begun in this very call without a resource never entered the begin order.
  if not (fresh and res == '') and redis.call('ZREM', UNBEGUN, handle) == 1 then unblock() end
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
      if batching then claim_view[handle] = false end
      return {'parked', holder, ''}
    end
    redis.call('HSET', LOCKS, res, handle)
    redis.call('HSET', HELD, handle, res)
  end
  local n = (tonumber(cur[5]) or 0) + 1
  if n > tonumber(max) then
    redis.call('HSET', hkey, 'attempts', n)
    return {'exhausted', tostring(n), ''}
  end
  local r = record(hkey, patch(rec, n), false, cur)
  return {'run', tostring(n), r[2]}
end

-- Finishes an attempt, only if it still holds its claim (same fence): records `rec` (when given;
-- attempts may be the placeholder: the hash's count is kept) and moves the task on as `how` says:
-- done, dead (`extra`: the dead-letter entry), delay (`extra`: ms; a lock holder keeps its lock and
-- its turn) or back (put back now: a lock holder to the ready list, any other task to the pop end
-- of `list`). Releasing the lock hands it to the resource's first waiter. hkey: the task hash (any
-- key when not recording), ikey: its idempotency record (hkey when none), body: a new body ('' to
-- keep), state: what the worker knows of the attempt, 'b' when it began, 'l' when it may hold a
-- lock (so a begun task without a resource skips both lookups).
-- Returns 1, or 0 when the claim was lost (a newer attempt owns the task: nothing written).
local function finish_one(hkey, list, ikey, handle, fence, how, extra, body, state, rec)
  if claim_fence(handle) ~= fence then return 0 end
  if rec then
    -- rec[21] is the attempts value: the placeholder keeps the count the begin step made.
    if rec[21] == '4294967295' then
      rec = patch(rec, redis.call('HGET', hkey, 'attempts') or '0')
    end
    record(hkey, rec, true)
    if ikey ~= hkey and redis.call('HGET', ikey, 'id') == rec[7] then
      local st = rec[11]
      if st == 'completed' or st == 'failed' or st == 'cancelled' then
        redis.call('HSET', ikey, 'status', st, 'result', rec[25])
      end
    end
  end
  drop_claim(handle, string.find(state, 'b', 1, true) ~= nil)
  local locked = string.find(state, 'l', 1, true) ~= nil
  if body ~= '' then redis.call('HSET', BODIES, handle, body) end
  if how == 'delay' then
    local due = now_ms() + tonumber(extra)
    local head = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
    redis.call('ZADD', DELAYED, due, handle)
    -- Due before every other delayed task: wake the promoter, which sleeps until the first one.
    if not head[2] or due < tonumber(head[2]) then redis.call('PUBLISH', PROMOTE_CHANNEL, due) end
  elseif how == 'back' then
    requeue(handle, list)
  else
    if locked then release(handle) end
    forget(handle)
    if how == 'dead' then redis.call('LPUSH', DEAD, extra) end
  end
  return 1
end

-- Calls f(...) and turns an error Redis raised inside it into the string '!<error>' (so one task's
-- WRONGTYPE fails that task's entry of a batch, not the whole call; a nested error reply would
-- fail the whole reply in the client).
local function guarded(f, ...)
  local ok, r = pcall(f, ...)
  if ok then return r end
  if type(r) == 'table' and r.err then return '!' .. r.err end
  return '!' .. tostring(r)
end
