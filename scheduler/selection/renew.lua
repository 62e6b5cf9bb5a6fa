-- Extend a live lease. KEYS[1] lease zset. ARGV: lease_id, ttl_ms.
-- Returns the new expiry (ms, server time), or 0 when the lease is unknown or
-- already expired (its slot may have been given away: the caller must select again).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if score == nil or score <= now then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl + 60000 then redis.call('PEXPIRE', KEYS[1], ttl + 60000) end
return now + ttl
