-- Read the runtime state of many accounts of one platform in one round trip.
-- KEYS: lease zset, state hash, lease zset, state hash, ... (pairs, one slot)
-- Returns {now_ms, {live_leases, {hash fields...}}, ...}; expired leases are not counted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for i = 1, #KEYS, 2 do
  out[#out + 1] = {redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf'), redis.call('HGETALL', KEYS[i + 1])}
end
return out
