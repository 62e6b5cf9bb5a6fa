-- Store quota readings from outside a release (the usage prober), exactly as
-- release.lua stores those of a response's usage headers: the same state-hash
-- fields ("q:5h" / "q:7d", values from store.encode_reading), nothing else, and
-- the same clock: each reading's observed_at / reset_at arrive relative to the
-- writer's now and are put on Redis TIME here.
-- KEYS[1] lease zset  KEYS[2] state hash (same slot)
-- ARGV: channel, account_id, origin, then field/value pairs to HSET (at least one)
-- Publishes "<account_id> <origin>" on the channel: other instances re-read the account.
-- Returns {live_leases, {state hash}, now_ms}: the account's state after the write, so
-- the writing instance's view has it at once (as a release's reply gives it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = now / 1000
for i = 4, #ARGV, 2 do
  local reading = cjson.decode(ARGV[i + 1])
  reading['observed_at'] = reading['observed_at'] + now_s
  if type(reading['reset_at']) == 'number' then reading['reset_at'] = reading['reset_at'] + now_s end
  redis.call('HSET', KEYS[2], ARGV[i], cjson.encode(reading))
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return {redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'), redis.call('HGETALL', KEYS[2]), now}
