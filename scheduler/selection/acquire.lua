-- Acquire one concurrency lease on one account, atomically, in Redis server time.
-- KEYS[1] lease zset (lease id -> expiry ms)   KEYS[2] runtime state hash
-- KEYS[3] session binding key (same slot; ignored when ARGV[5] == '0')
-- ARGV: lease_id, concurrency, ttl_ms, account_id, bind_mode, bind_ttl_ms
--   The lease is stored as "<lease_id>-<now_ms>": its grant time (server clock) is
--   part of the id, so renew can cap its lifetime, and a changed time is an unknown lease.
--   bind_mode '0' none; '1' sticky: refuse (-3) if the binding names another
--   account, else (re)bind and refresh the TTL; '2' pool: bind only if absent.
-- Returns {1, leases_now, expiry_ms, now_ms, {state hash}, bound, lease}   acquired
--         (bound: the session binding after the call, false when none; lease: the id)
--         {-1, which, until_ms, now_ms}  deadline (1 rate-limited, 2 overloaded, 3 temp)
--         {-2, leases_now, 0, now_ms}     full
--         {-3, bound_account, 0, now_ms}  the session is bound to another account
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[5]
if mode == '1' then
  local bound = redis.call('GET', KEYS[3])
  if bound and bound ~= ARGV[4] then return {-3, bound, 0, now} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local st = redis.call('HMGET', KEYS[2], 'rl_until', 'ol_until', 'tu_until')
for i = 1, 3 do
  local u = tonumber(st[i])
  if u and u > now then return {-1, i, tostring(u), now} end
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return {-2, n, 0, now} end
local ttl = tonumber(ARGV[3])
local lease = ARGV[1] .. '-' .. now
redis.call('ZADD', KEYS[1], now + ttl, lease)
-- The set must outlive its newest lease (renewals extend it the same way), and
-- an idle account's set disappears on its own.
if redis.call('PTTL', KEYS[1]) < ttl + 60000 then redis.call('PEXPIRE', KEYS[1], ttl + 60000) end
if mode == '1' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[6])
elseif mode == '2' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[6], 'NX')
end
local bound = false
if mode ~= '0' then bound = redis.call('GET', KEYS[3]) end
return {1, n + 1, now + ttl, now, redis.call('HGETALL', KEYS[2]), bound, lease}
