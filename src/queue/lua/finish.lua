-- finish: records an attempt's outcome and moves the task on, only if the attempt still holds
-- its claim (same fence): done, dead (dead-letter entry), delay (retry later; a lock holder keeps
-- its lock and its turn) or back (put back now: a lock holder to the ready list, any other task to
-- the pop end of its list). Releasing the lock hands it to the resource's first waiter.
-- KEYS[1..12]: queue state (common.lua); KEYS[13]: task hash (or any key when not recording),
-- KEYS[14]: the task's list (for back), KEYS[15]: its idempotency record (KEYS[13] when none).
-- ARGV[1]: handle, ARGV[2]: fence, ARGV[3]: how, ARGV[4]: delay (ms) or dead-letter entry,
-- ARGV[5]: new body ('' to keep), ARGV[6]: '1' to record, then the record arguments (attempts
-- may be the placeholder: the hash's count is kept).
-- Returns 1, or 0 when the claim was lost (a newer attempt owns the task: nothing written).
local handle, fence, how, extra, body, rec_flag = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if claim_fence(handle) ~= fence then return 0 end
if rec_flag == '1' then
  local rec = {}
  for i = 7, #ARGV do rec[#rec + 1] = ARGV[i] end
  -- rec[21] is the attempts value: the placeholder keeps the count the begin script made.
  if rec[21] == '4294967295' then
    rec = patch(rec, redis.call('HGET', KEYS[13], 'attempts') or '0')
  end
  record(KEYS[13], rec)
  if KEYS[15] ~= KEYS[13] and redis.call('HGET', KEYS[15], 'id') == rec[7] then
    local st = redis.call('HGET', KEYS[13], 'status')
    if st == 'completed' or st == 'failed' or st == 'cancelled' then
      redis.call('HSET', KEYS[15], 'status', st, 'result', redis.call('HGET', KEYS[13], 'result') or '')
    end
  end
end
drop_claim(handle)
if body ~= '' then redis.call('HSET', BODIES, handle, body) end
if how == 'delay' then
  redis.call('ZADD', DELAYED, now_ms() + tonumber(extra), handle)
elseif how == 'back' then
  requeue(handle, KEYS[14])
else
  release(handle)
  forget(handle)
  if how == 'dead' then redis.call('LPUSH', DEAD, extra) end
end
return 1
