-- renew: extends the leases of one worker's running attempts in one call (also its locks, which
-- live as long as their holder's lease).
-- KEYS[1..12]: queue state (common.lua). ARGV[1]: lease (ms), then handle, fence pairs.
-- Returns the handles whose claim is lost (recovered and claimed again, or finished by another).
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  if claim_fence(ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', LEASES, 'XX', deadline, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
