-- Store quota readings from outside a release (the usage prober), exactly as
-- release.lua stores those of a response's usage headers: the same state-hash
-- fields ("q:5h" / "q:7d", values from store.window_field), nothing else.
-- KEYS[1] lease zset  KEYS[2] state hash (same slot)
-- ARGV: channel, account_id, origin, then field/value pairs to HSET (at least one)
-- Publishes "<account_id> <origin>" on the channel: other instances re-read the account.
-- Returns {live_leases, {state hash}}: the account's state after the write, so
-- the writing instance's view has it at once (as a release's reply gives it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pairs_ = {}
for i = 4, #ARGV do pairs_[#pairs_ + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(pairs_))
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return {redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'), redis.call('HGETALL', KEYS[2])}
