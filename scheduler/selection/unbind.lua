-- Delete a sticky binding only if it still names the account the caller saw.
-- KEYS[1] binding key.  ARGV[1] account id.  Returns 1 if deleted, 0 otherwise.
-- A plain DEL would erase a binding another instance made since (rebinding the
-- session after this instance read the old one, up to its cache age ago).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
