-- Read many probe records in one round trip. KEYS: record hashes (one hash tag).
-- Returns {{last_us, not_before_us, fails, result}, ...} (false for absent fields).
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HMGET', key, 'last_us', 'not_before_us', 'fails', 'result')
end
return out
