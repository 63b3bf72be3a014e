-- keepalive.lua: one call per replica per round. It renews the leases the
-- replica holds and, while it has callers queued, its heartbeat: waiters are
-- kept alive per replica, never one by one. Renewal never resurrects: a lease
-- that has already expired (or was released) is reported lost, not
-- re-created. It also drops expired leases and dead replicas' waiters at the
-- head of the queue, and wakes the head if that changed anything. With no
-- replica and no ids it is the upkeep (and the health check) alone.
--
-- KEYS[1]  leases
-- KEYS[2]  queue
-- KEYS[3]  replicas
-- KEYS[4]  clock
-- ARGV[1]  lease_ttl: microseconds
-- ARGV[2]  waiter_ttl: microseconds a heartbeat lasts
-- ARGV[3]  wake prefix (see acquire.lua)
-- ARGV[4]  PUBLISH or SPUBLISH
-- ARGV[5]  replica: the caller, or "" (no heartbeat: it has no waiters)
-- ARGV[6..] lease ids
--
-- Returns {lost, stale}: lost = the lease ids that were no longer there;
-- stale = 1 if the replica's heartbeat had expired (its waiters may have
-- been dropped from the queue: they should ask again), else 0.
local leases, queue, replicas = KEYS[1], KEYS[2], KEYS[3]
local lease_ttl, waiter_ttl, wake_prefix, pub, replica = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local now = clock(KEYS[4])
local wake = redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) > 0
local stale = 0
if replica ~= '' then
  local alive = tonumber(redis.call('ZSCORE', replicas, replica) or '0') or 0
  if alive < now then
    stale = 1
  end
  redis.call('ZADD', replicas, now + waiter_ttl, replica)
  keep_ttl(waiter_ttl, queue, replicas)
end
redis.call('ZREMRANGEBYSCORE', replicas, '-inf', now)
local queued = redis.call('ZCARD', queue)
if queued > 0 and drop_dead_heads(queue, replicas, now) > 0 then
  wake = true
end
local lost = {}
for i = 6, #ARGV do
  if redis.call('ZSCORE', leases, ARGV[i]) then
    redis.call('ZADD', leases, 'XX', now + lease_ttl, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #ARGV >= 6 then
  keep_ttl(lease_ttl, leases)
end
if wake then
  wake_head(queue, replicas, now, wake_prefix, pub)
end
return {lost, stale}
