-- Claim one account for a usage probe, atomically, in Redis server time.
-- KEYS[1] probe lock  KEYS[2] probe record hash  KEYS[3] global rate  KEYS[4] platform rate
-- (all under one hash tag). The rates are GCRA cells: a key holds the theoretical
-- arrival time in microseconds; a probe may start while tat - now <= (burst - 1) * interval.
-- ARGV: token, lock_ttl_ms, min_interval_us, global_interval_us, platform_interval_us,
--       burst, force ('1': an operator's probe; the record's not-before and the
--       minimum interval do not apply, the lock and the rates do)
-- Returns {1, now_us, fails}    claimed: the lock is ours until released or lock_ttl_ms
--         {-1, pttl_ms}         another probe holds the lock
--         {-2, not_before_us}   not due: backoff, Retry-After or the minimum interval
--         {-3, wait_us}         over a rate: nothing taken; try again after wait_us
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, redis.call('PTTL', KEYS[1])} end
local rec = redis.call('HMGET', KEYS[2], 'last_us', 'not_before_us', 'fails')
if ARGV[7] ~= '1' then
  local nb = 0
  local last = tonumber(rec[1])
  if last then nb = last + tonumber(ARGV[3]) end
  local b = tonumber(rec[2])
  if b and b > nb then nb = b end
  if nb > now then return {-2, string.format('%d', nb)} end
end
local burst = tonumber(ARGV[6])
local function tat_of(key)
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then tat = now end
  return tat
end
local gi, pi = tonumber(ARGV[4]), tonumber(ARGV[5])
local gtat, ptat = tat_of(KEYS[3]), tat_of(KEYS[4])
local wait = math.max(gtat - now - (burst - 1) * gi, ptat - now - (burst - 1) * pi)
if wait > 0 then return {-3, string.format('%d', wait)} end
local function take(key, tat, interval)
  local nxt = tat + interval
  -- The cell only matters while it is ahead of now: let it expire after that.
  redis.call('SET', key, string.format('%d', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
end
take(KEYS[3], gtat, gi)
take(KEYS[4], ptat, pi)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, string.format('%d', now), tonumber(rec[3]) or 0}
