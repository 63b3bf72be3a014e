-- release.lua: release leases and withdraw waiters, by id, then serve the
-- queue with the slots that freed (see serve in common.lua). Idempotent: an
-- id that is not there (already released, expired, or never granted) is
-- skipped.
--
-- Every id gets a tombstone in `gone` for a while (ARGV[8]): an acquire of
-- that id that reaches Redis later (a call delayed on another connection, or
-- resent by the client after its caller gave up) is refused instead of
-- leaving a phantom lease or queue place. An acquire whose outcome is unknown
-- (timeout, error) is therefore undone exactly by releasing its id, whatever
-- the order in which the two calls arrive within that while.
--
-- KEYS, ARGV[1..7]: see semaphore_state in common.lua.
-- ARGV[8]  tombstone_ttl: microseconds (expired tombstones are dropped
--          about once per tombstone_ttl, so at most about twice that long's
--          worth of releases is kept)
-- ARGV[9..] ids
--
-- Returns the number of leases released.
local st = semaphore_state()
local now, tomb_ttl = st.now, tonumber(ARGV[8])
local queued = redis.call('ZCARD', st.queue)
local released, nudge, head = 0, false, nil
for i = 9, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', st.leases, id) == 1 then
    released = released + 1
    nudge = true
  elseif queued > 0 then
    -- A waiter withdrawing; if it was the head, the next one is.
    head = head or redis.call('ZRANGE', st.queue, 0, 0)[1]
    if redis.call('ZREM', st.queue, id) == 1 then
      queued = queued - 1
      nudge = nudge or head == id
    end
  end
  redis.call('ZADD', st.gone, now + tomb_ttl, id)
end
-- Expired tombstones are dropped whenever the set's TTL is renewed (about
-- once per tombstone_ttl while releases go on), not on every call.
if keep_ttl(tomb_ttl, false, st.gone) then
  redis.call('ZREMRANGEBYSCORE', st.gone, '-inf', now)
end
if queued > 0 then
  -- Expired leases (of holders that died) go before serving, so that they
  -- hold no slot a waiter could have. (With nobody queued they block no
  -- one: an acquire that finds the semaphore full drops them itself.)
  redis.call('ZREMRANGEBYSCORE', st.leases, '-inf', now)
  local holders = redis.call('ZCARD', st.leases)
  if holders < st.size then
    serve(st, holders, queued, {}, nudge)
  end
end
return released
