-- record_fenced: records one progress update of a running attempt, only while the attempt still
-- holds its claim (same fence); a stale attempt's write is refused.
-- KEYS[1]: task hash, KEYS[2]: the claims hash ({orch}:claims).
-- ARGV[1]: handle, ARGV[2]: fence, then the record arguments (`progress::record_args`).
-- Returns {seq, cancel flag}, or {-1, ''} when the claim is lost.
local c = redis.call('HGET', KEYS[2], ARGV[1])
if not c or string.match(c, '^(%d+)|') ~= ARGV[2] then return {-1, ''} end
local a = {}
for i = 3, #ARGV do a[#a + 1] = ARGV[i] end
return record(KEYS[1], a)
