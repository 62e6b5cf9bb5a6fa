-- Store quota readings from outside a release (the usage prober), exactly as
-- release.lua stores those of a response's usage headers: the same state-hash
-- fields ("q:5h" / "q:7d", values from store.window_field), nothing else.
-- KEYS[1] lease zset  KEYS[2] state hash (same slot)
-- ARGV: field/value pairs to HSET (at least one pair)
-- Returns {live_leases, {state hash}}: the account's state after the write, so
-- the writing instance's view has it at once (as a release's reply gives it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], unpack(ARGV))
return {redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'), redis.call('HGETALL', KEYS[2])}
