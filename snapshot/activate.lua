-- Activate a fully written snapshot version of one bucket, atomically.
-- KEYS: 1 active, 2 ready, 3 lock, 4-6 new version (meta, members, records),
--       7-9 previous version (meta, members, records) as the caller last saw it.
-- ARGV: 1 new version "<n>:<epoch>", 2 lock owner token, 3 the active value the
--       caller expects ('' = none), 4 grace period in ms, 5 pub/sub channel,
--       6 activation message.
-- Versions compare by epoch, then number (see keys.py); a bare legacy number is epoch 0.
-- Returns {outcome, active value after the call ('' = none)}:
--   'fenced'    the lock is not held with this token: new keys deleted
--   'stale'     new version <= active one: new keys deleted (never go backwards)
--   'moved'     active changed since the caller read it: nothing done, retry
--   'missing'   the new version's meta is gone (its build TTL ran out): the rest
--               deleted, nothing activated -- an empty version must never go live
--   'activated' done: new keys persisted, previous keys expire after the grace
-- Touches only KEYS (one hash tag), so it runs unchanged on Redis Cluster.
local function parse(raw)
  if not raw or raw == '' then return 0, 0 end
  local n, e = string.match(raw, '^(%d+):(%d+)$')
  if n then return tonumber(e), tonumber(n) end
  return 0, tonumber(raw) or 0
end
local active = redis.call('GET', KEYS[1]) or ''
local ae, an = parse(active)
local ne, nn = parse(ARGV[1])
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  return {'fenced', active}
end
if ne < ae or (ne == ae and nn <= an) then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  return {'stale', active}
end
if active ~= ARGV[3] then
  return {'moved', active}
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('DEL', KEYS[5], KEYS[6])
  return {'missing', active}
end
-- Written with a build TTL so a crashed writer leaves nothing behind; the
-- active version lives until the next activation expires it.
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[5])
redis.call('PERSIST', KEYS[6])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1')
if active ~= '' then
  -- EXPIRE, not DEL: a reader in the middle of loading the old version finishes.
  local grace = tonumber(ARGV[4])
  redis.call('PEXPIRE', KEYS[7], grace)
  redis.call('PEXPIRE', KEYS[8], grace)
  redis.call('PEXPIRE', KEYS[9], grace)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'activated', ARGV[1]}
