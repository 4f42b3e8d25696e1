-- lead: takes or keeps a leadership key (one reaper, one promoter per deployment).
-- KEYS[1]: the leadership key. ARGV[1]: candidate id, ARGV[2]: TTL (ms).
-- Returns 1 when the candidate leads.
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
