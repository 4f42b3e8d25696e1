-- tick: one exchange between a worker and the queue, in one call. Under load that is one round
-- trip per batch of tasks; after an idle worker is woken, one round trip takes the task and
-- records "processing". In this order: records the outcomes of finished attempts (releasing their
-- locks to the next waiters), begins the tasks claimed by earlier calls, claims up to `want` tasks
-- (the ready list first, then the lists in claim order), beginning at once those whose body the
-- worker prepared beforehand (hints: bodies it saw at the pop end of a list), and peeks at the next
-- bodies so the worker can prepare them for its next call.
-- KEYS[1..12]: queue state (common.lua); KEYS[13..12+L]: the queue lists in claim order; then
-- 3 keys per finish (its task hash, or any key when not recording; its list; its idempotency
-- record, or the first key again), 2 per begin and 2 per hint (task hash; idempotency record or
-- the hash again).
-- ARGV[1]: worker id, ARGV[2]: lease (ms), ARGV[3]: most tasks to claim, ARGV[4]: most bodies to
-- peek, ARGV[5]: how long (ms) a claim recovered before it began holds younger tasks back,
-- ARGV[6]: idempotency wait bound (ms), ARGV[7]: idempotency TTL (s), ARGV[8]: L, ARGV[9]: number
-- of finishes, ARGV[10]: of begins, ARGV[11]: of hints; then
--   per finish: handle, fence, how, extra, new body ('' to keep), state ('b': it began, 'l': it
--   may hold a lock), n, n record arguments (n = 0: nothing recorded);
--   per begin: handle, fence, resource ('' for none), task id, max attempts, waiting message, n,
--   n record arguments (`progress::record_args`, attempts as the placeholder);
--   per hint: list, body, then as per begin without handle and fence.
-- Returns {finished, begun, claimed, peeked}:
--   finished: per finish 1, 0 (the claim was lost: nothing written) or "!<error Redis raised>";
--   begun: per begin {verdict, a, b} (attempt.lua's begin_one) or "!<error Redis raised>" (a
--   task hash of another type: WRONGTYPE, nothing written for it);
--   claimed: per task claimed {handle, fence, list, hint (its 1-based index, 0 for none), body
--   ('' when hinted), then for a hinted task its verdict (as in begun)};
--   peeked: list, body, ... for the next bodies in claim order (left where they are).
local worker, lease, want, peek = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local gc, idem_wait, idem_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local nlists, nfinish, nbegin, nhint = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_ms()
local ai, ki = 12, 13 + nlists
batching = true

-- The n record arguments at ai (after their count), or nil when n is 0.
local function take_record()
  local n = tonumber(ARGV[ai])
  ai = ai + 1
  if n == 0 then return nil end
  local rec = {unpack(ARGV, ai, ai + n - 1)}
  ai = ai + n
  return rec
end

local finished = {}
for f = 1, nfinish do
  local hkey, list, ikey = KEYS[ki], KEYS[ki + 1], KEYS[ki + 2]
  ki = ki + 3
  local handle, fence, how, extra, body, state = ARGV[ai], ARGV[ai + 1], ARGV[ai + 2], ARGV[ai + 3], ARGV[ai + 4], ARGV[ai + 5]
  ai = ai + 6
  local rec = take_record()
  finished[f] = guarded(finish_one, hkey, list, ikey, handle, fence, how, extra, body, state, rec)
end
flush()

local begun = {}
for b = 1, nbegin do
  local hkey, ikey = KEYS[ki], KEYS[ki + 1]
  ki = ki + 2
  local handle, fence, res, id, max, msg = ARGV[ai], ARGV[ai + 1], ARGV[ai + 2], ARGV[ai + 3], ARGV[ai + 4], ARGV[ai + 5]
  ai = ai + 6
  local rec = take_record()
  begun[b] = guarded(begin_one, hkey, ikey, handle, fence, res, id, max, msg, rec, now, gc, idem_wait, idem_ttl, false)
end
flush()

-- Hints by list, in the order the worker saw them at the pop end.
local hints = {}
for h = 1, nhint do
  local hint = {index = h, hkey = KEYS[ki], ikey = KEYS[ki + 1], list = ARGV[ai], body = ARGV[ai + 1],
    res = ARGV[ai + 2], id = ARGV[ai + 3], max = ARGV[ai + 4], msg = ARGV[ai + 5]}
  ki = ki + 2
  ai = ai + 6
  hint.rec = take_record()
  hints[hint.list] = hints[hint.list] or {}
  table.insert(hints[hint.list], hint)
end
-- The first unused hint of `list` for `body` (another worker may have taken the ones before it).
local function hint_for(list, body)
  local candidates = hints[list]
  if not candidates then return nil end
  for i, hint in ipairs(candidates) do
    if hint.body == body then
      table.remove(candidates, i)
      return hint
    end
  end
  return nil
end

-- Claims first (their writes batched and sent before anything reads them), then the begins of
-- the hinted ones, in claim order.
local claimed, hinted = {}, {}
local got = 0
while got < want do
  local h = redis.call('LPOP', READY)
  if not h then break end
  local body, list = redis.call('HGET', BODIES, h), redis.call('HGET', ORIGIN, h)
  -- A live claim means it is in flight already (fence '0' marks a claim recovered before it began).
  local f = claim_fence(h)
  if body and list and (not f or f == '0') then
    claimed[#claimed + 1] = {h, claim_one(h, worker, lease, now, true), list, 0, body}
    got = got + 1
  end
end
for i = 13, 12 + nlists do
  if got >= want then break end
  local list = KEYS[i]
  local bodies = redis.call('RPOP', list, want - got)
  for _, body in ipairs(bodies or {}) do
    local handle = adopt(list, body)
    local hint = hint_for(list, body)
    if hint then
      local fence = claim_one(handle, worker, lease, now, hint.res ~= '')
      claimed[#claimed + 1] = {handle, fence, list, hint.index, ''}
      hinted[#hinted + 1] = {#claimed, hint}
    else
      claimed[#claimed + 1] = {handle, claim_one(handle, worker, lease, now, true), list, 0, body}
    end
    got = got + 1
  end
end
flush()
for _, e in ipairs(hinted) do
  local c, hint = claimed[e[1]], e[2]
  c[6] = guarded(begin_one, hint.hkey, hint.ikey, c[1], c[2], hint.res, hint.id, hint.max, hint.msg,
    hint.rec, now, gc, idem_wait, idem_ttl, true)
end
flush()

local peeked = {}
local left = peek
for i = 13, 12 + nlists do
  if left <= 0 then break end
  local tail = redis.call('LRANGE', KEYS[i], -left, -1)
  for j = #tail, 1, -1 do
    peeked[#peeked + 1] = KEYS[i]
    peeked[#peeked + 1] = tail[j]
  end
  left = left - #tail
end
return {finished, begun, claimed, peeked}
