-- Allocate the next version of one bucket: {number, epoch}.
-- KEYS[1] the bucket's seq hash (fields n, epoch).
-- ARGV: 1 the newest epoch the caller knows of, 2 the highest number it saw in that
--       epoch ('0' when none).
-- The epoch is made with the counter: when the hash is gone (a flush, a restart
-- without persistence) HINCRBY starts again at 1 and a new epoch is stamped, so the
-- new versions outrank every old one although their numbers are small. A counter
-- that went back within the caller's epoch (a failover that lost increments: the
-- number is not above what the caller already saw) gets a new epoch the same way.
-- The new epoch is Redis TIME in microseconds, and always above the caller's.
local e = redis.call('HGET', KEYS[1], 'epoch')
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if not e or (e == ARGV[1] and n <= tonumber(ARGV[2])) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local floor = (tonumber(ARGV[1]) or 0) + 1
  if now < floor then now = floor end
  e = string.format('%.0f', now)
  redis.call('HSET', KEYS[1], 'epoch', e)
end
return {n, e}
