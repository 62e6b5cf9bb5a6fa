-- Release a rebuild lock only if it is still held with the caller's token.
-- KEYS: 1 lock.  ARGV: 1 owner token.  Returns 1 if deleted, 0 otherwise.
-- A plain DEL would let a holder whose lock expired delete its successor's lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
