-- Release one lease and apply the request's outcome to the account's runtime state.
-- KEYS[1] lease zset  KEYS[2] state hash  KEYS[3] response binding key (same slot)
-- ARGV: lease_id, account_id, channel, alpha, is_error ('0'/'1'),
--       latency_ms ('' = none), ttft_ms ('' = none), response_ttl_ms ('0' = no binding),
--       origin (the releasing instance's token), then field/value pairs to HSET
--       (deadlines, quota readings, last_used).
-- Publishes "<account_id> <origin>" on the channel: the origin skips its own message.
-- Returns 0 when the lease is unknown (never granted, released, or expired -- pruned
-- or not, as renew.lua judges it: its slot may already be someone else's): nothing
-- is changed then, so a late release answers the same whether or not an acquire
-- happened to prune it first. Otherwise {1, live_leases, {state hash}}: the
-- account's state after the release, so this instance's view has it at once.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if score == nil then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if score <= now then return 0 end
local alpha = tonumber(ARGV[4])
local function ewma(field, sample)
  if sample == nil then return end
  local old = tonumber(redis.call('HGET', KEYS[2], field))
  local new = sample
  if old then new = alpha * sample + (1 - alpha) * old end
  redis.call('HSET', KEYS[2], field, tostring(new))
end
ewma('ewma_err', tonumber(ARGV[5]))
ewma('ewma_lat', tonumber(ARGV[6]))
ewma('ewma_ttft', tonumber(ARGV[7]))
if #ARGV > 9 then
  local pairs_ = {}
  for i = 10, #ARGV do pairs_[#pairs_ + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(pairs_))
end
if tonumber(ARGV[8]) > 0 then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[8]) end
redis.call('PUBLISH', ARGV[3], ARGV[2] .. ' ' .. ARGV[9])
return {1, redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'), redis.call('HGETALL', KEYS[2])}
