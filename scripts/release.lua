-- release.lua: release leases and withdraw waiters, by id. Idempotent: an id
-- that is not there (already released, expired, or never granted) is skipped.
--
-- Every id gets a tombstone in `gone` for a while (ARGV[1]): an acquire of
-- that id that reaches Redis later (a call delayed on another connection, or
-- resent by the client after its caller gave up) is refused instead of
-- leaving a phantom lease or queue place. An acquire whose outcome is unknown
-- (timeout, error) is therefore undone exactly by releasing its id, whatever
-- the order in which the two calls arrive within that while.
--
-- KEYS[1]  leases
-- KEYS[2]  queue
-- KEYS[3]  replicas
-- KEYS[4]  gone
-- KEYS[5]  clock
-- ARGV[1]  tombstone_ttl: microseconds; at most 100000 tombstones are kept
-- ARGV[2]  wake prefix (see acquire.lua)
-- ARGV[3]  PUBLISH or SPUBLISH
-- ARGV[4..] ids
--
-- Returns the number of leases released.
local leases, queue, replicas, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tomb_ttl, wake_prefix, pub = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local now = clock(KEYS[5])
local queued = redis.call('ZCARD', queue)
local released, wake, head = 0, false, nil
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', leases, id) == 1 then
    released = released + 1
    wake = true
  elseif queued > 0 then
    -- A waiter withdrawing; if it was the head, the next one is.
    head = head or redis.call('ZRANGE', queue, 0, 0)[1]
    if redis.call('ZREM', queue, id) == 1 then
      queued = queued - 1
      wake = wake or head == id
    end
  end
  redis.call('ZADD', gone, now + tomb_ttl, id)
end
redis.call('ZREMRANGEBYSCORE', gone, '-inf', now)
local n = redis.call('ZCARD', gone)
if n > 100000 then
  redis.call('ZREMRANGEBYRANK', gone, 0, n - 100001)
end
keep_ttl(tomb_ttl, gone)
if wake and queued > 0 then
  wake_head(queue, replicas, now, wake_prefix, pub)
end
return released
