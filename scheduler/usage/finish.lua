-- End a usage probe: release the lock (only if still ours) and record the outcome
-- for every instance, in Redis server time.
-- KEYS[1] probe lock  KEYS[2] probe record hash (same hash tag)
-- ARGV: token, result, fails, delay_ms ('0': no not-before), record_ttl_ms
-- Returns 1 when the lock was still ours (outcome recorded), 0 when it had
-- expired or been taken over (nothing written: the outcome is too late to count).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'last_us', string.format('%d', now), 'result', ARGV[2], 'fails', ARGV[3])
local delay = tonumber(ARGV[4])
if delay > 0 then
  redis.call('HSET', KEYS[2], 'not_before_us', string.format('%d', now + delay * 1000))
else
  redis.call('HDEL', KEYS[2], 'not_before_us')
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
