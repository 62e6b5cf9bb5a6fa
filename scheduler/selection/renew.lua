-- Extend a live lease; never shorten it. KEYS[1] lease zset.
-- ARGV: lease_id, ttl_ms (already capped per renewal), end_ms (the lease's lifetime
-- cap: grant time + max lifetime, server clock; '0' = none).
-- New expiry: now + ttl_ms, cut at end_ms, but never before the current expiry.
-- Returns {new_expiry_ms, now_ms, old_expiry_ms}, or {0, now_ms, 0} when the lease
-- is unknown or already expired (its slot may have been given away: select again).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if score == nil or score <= now then return {0, now, 0} end
local want = now + tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
if cap > 0 and want > cap then want = cap end
if want < score then want = score end
redis.call('ZADD', KEYS[1], 'XX', want, ARGV[1])
local keep = want - now + 60000
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return {want, now, score}
