-- resign: gives up a leadership key if the candidate holds it, and passes the baton: one token on
-- the baton list wakes one idle worker blocked on it, which takes the leadership (the listener's
-- role: only the listener blocks on the queue lists, so one push wakes one worker).
-- KEYS[1]: the leadership key, KEYS[2]: the baton list. ARGV[1]: candidate id.
-- Returns 1 when it held the leadership.
local held = redis.call('GET', KEYS[1]) == ARGV[1]
if held then redis.call('DEL', KEYS[1]) end
-- One token at most: a token nobody was waiting for wakes one worker later, for nothing.
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('LPUSH', KEYS[2], '1') end
if held then return 1 end
return 0
