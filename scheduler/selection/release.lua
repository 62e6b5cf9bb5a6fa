-- Release one lease and apply the request's outcome to the account's runtime state.
-- KEYS[1] lease zset  KEYS[2] state hash  KEYS[3] response binding key (same slot)
-- ARGV: 1 lease_id, 2 account_id, 3 channel, 4 alpha, 5 is_error ('0'/'1', '' = no sample),
--       6 latency_ms ('' = none), 7 ttft_ms ('' = none), 8 response_ttl_ms ('0' = no binding),
--       9 origin (the releasing instance's token), 10 apply when the lease is gone ('1'/'0'),
--       11 rate-limited for ms, 12 overloaded for ms, 13 unschedulable for ms ('' = none each),
--       14 unschedulable reason, 15 '1' to record last use,
--       16 rate-limit room (remaining / limit, '' = none), 17 for how many ms it holds,
--       then field/value pairs of quota readings whose observed_at / reset_at are seconds
--       relative to now (JSON; this script makes them absolute in Redis time).
-- Every deadline and time written here is Redis TIME + a duration: one clock, whatever
-- the releasing instance's clock says.
-- The lease is live when its score (expiry) is still ahead of now; an expired or unknown
-- one is "gone" (its slot may already be someone else's, as renew.lua judges it).
-- Account-level effects (deadlines, readings, averages, last use, the response binding)
-- apply either way when ARGV[10] is '1'; only the lease bookkeeping (ZREM, the PUBLISH
-- that frees a slot) depends on the lease. Publishes "<account_id> <origin>" for a live one.
-- Returns 0 when the lease is gone and ARGV[10] is '0' (nothing changed), else
-- {live (1 released, 0 gone), live_leases, {state hash}, now_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local live = score ~= nil and score > now
if score ~= nil then redis.call('ZREM', KEYS[1], ARGV[1]) end
if not live and ARGV[10] ~= '1' then return 0 end
local alpha = tonumber(ARGV[4])
local function ewma(field, sample)
  if sample == nil then return end
  local old = tonumber(redis.call('HGET', KEYS[2], field))
  local new = sample
  if old then new = alpha * sample + (1 - alpha) * old end
  redis.call('HSET', KEYS[2], field, tostring(new))
end
local function deadline(field, for_ms)
  local d = tonumber(for_ms)
  if d then redis.call('HSET', KEYS[2], field, tostring(now + math.floor(d))) end
end
ewma('ewma_err', tonumber(ARGV[5]))
ewma('ewma_lat', tonumber(ARGV[6]))
ewma('ewma_ttft', tonumber(ARGV[7]))
deadline('rl_until', ARGV[11])
deadline('ol_until', ARGV[12])
deadline('tu_until', ARGV[13])
if ARGV[14] ~= '' then redis.call('HSET', KEYS[2], 'tu_reason', ARGV[14]) end
if ARGV[15] == '1' then redis.call('HSET', KEYS[2], 'last_used', tostring(now)) end
if ARGV[16] ~= '' then
  redis.call('HSET', KEYS[2], 'rl_room', ARGV[16])
  deadline('rl_room_until', ARGV[17])
end
local now_s = now / 1000
for i = 18, #ARGV, 2 do
  local reading = cjson.decode(ARGV[i + 1])
  reading['observed_at'] = reading['observed_at'] + now_s
  if type(reading['reset_at']) == 'number' then reading['reset_at'] = reading['reset_at'] + now_s end
  redis.call('HSET', KEYS[2], ARGV[i], cjson.encode(reading))
end
if tonumber(ARGV[8]) > 0 then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[8]) end
if live then redis.call('PUBLISH', ARGV[3], ARGV[2] .. ' ' .. ARGV[9]) end
return {live and 1 or 0, redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'),
        redis.call('HGETALL', KEYS[2]), now}
