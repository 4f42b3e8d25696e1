-- recover: gives back one claim whose lease expired, if it is still that claim (same fence) and
-- still expired: counts the recovery, then requeues it (a lock holder keeps its lock and turn)
-- or, past the most recoveries, dead-letters it as a poison pill.
-- KEYS[1..12]: queue state (common.lua); KEYS[13]: task hash, KEYS[14]: its list.
-- ARGV[1]: handle, ARGV[2]: fence, ARGV[3]: most recoveries, ARGV[4]: dead-letter entry
-- (attempts as the placeholder), ARGV[5]: n, then n record arguments for the requeue, then the
-- record arguments for the poison pill.
-- Returns {'skip'|'requeued'|'dead', recoveries}.
local handle, fence, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
if claim_fence(handle) ~= fence then return {'skip', 0} end
local score = redis.call('ZSCORE', LEASES, handle)
if not score or tonumber(score) > now_ms() then return {'skip', 0} end
local n = redis.call('HINCRBY', KEYS[13], 'recoveries', 1)
local attempts = tonumber(redis.call('HGET', KEYS[13], 'attempts') or '0') or 0
local k = tonumber(ARGV[5])
local queued, failed = {}, {}
for i = 1, k do queued[i] = ARGV[5 + i] end
for i = 6 + k, #ARGV do failed[#failed + 1] = ARGV[i] end
local unbegun = redis.call('ZSCORE', UNBEGUN, handle)
drop_claim(handle, false)
if n > max then
  record(KEYS[13], patch(failed, attempts))
  release(handle)
  forget(handle)
  local entry = string.gsub(ARGV[4], '"attempts":4294967295', '"attempts":' .. attempts)
  redis.call('LPUSH', DEAD, entry)
  return {'dead', n}
end
record(KEYS[13], patch(queued, attempts))
if unbegun then
  -- Stopped before it began: it keeps its place in its resource's order (fence 0 matches no
  -- attempt; the time starts the window younger tasks of its resource wait for it).
  redis.call('ZADD', UNBEGUN, unbegun, handle)
  redis.call('HSET', CLAIMS, handle, '0|' .. now_ms() .. '|')
end
requeue(handle, KEYS[14])
return {'requeued', n}
