-- Activate a fully written snapshot version of one bucket, atomically.
-- KEYS: 1 active, 2 ready, 3 lock, 4-6 new version (meta, members, records),
--       7-9 previous version (meta, members, records) as the caller last saw it.
-- ARGV: 1 new version, 2 lock owner token, 3 previous version the caller expects,
--       4 grace period in ms, 5 pub/sub channel, 6 activation message.
-- Returns {outcome, active version after the call}:
--   'fenced'    the lock is not held with this token: new keys deleted
--   'stale'     new version <= active one: new keys deleted (never go backwards)
--   'moved'     active changed since the caller read it: nothing done, retry
--   'activated' done: new keys persisted, previous keys expire after the grace
-- Touches only KEYS (one hash tag), so it runs unchanged on Redis Cluster.
local new = tonumber(ARGV[1])
local active = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  return {'fenced', active}
end
if new <= active then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  return {'stale', active}
end
if active ~= tonumber(ARGV[3]) then
  return {'moved', active}
end
-- Written with a build TTL so a crashed writer leaves nothing behind; the
-- active version lives until the next activation expires it.
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[5])
redis.call('PERSIST', KEYS[6])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1')
if active > 0 then
  -- EXPIRE, not DEL: a reader in the middle of loading the old version finishes.
  local grace = tonumber(ARGV[4])
  redis.call('PEXPIRE', KEYS[7], grace)
  redis.call('PEXPIRE', KEYS[8], grace)
  redis.call('PEXPIRE', KEYS[9], grace)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'activated', new}
