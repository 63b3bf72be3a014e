-- keepalive.lua: one call per replica per round. It renews the leases the
-- replica holds and, while it has callers queued, its heartbeat: waiters are
-- kept alive per replica, never one by one. Renewal never resurrects: a lease
-- that has already expired (or was released) is reported lost, not
-- re-created. It also drops expired leases and serves the queue with the
-- slots that freed (see serve in common.lua), dropping dead replicas'
-- waiters that reached the head. With no replica and no ids it is the upkeep
-- (and the health check) alone.
--
-- KEYS, ARGV[1..7]: see semaphore_state in common.lua.
-- ARGV[8]  replica: the caller, or "" (no heartbeat: it has no waiters)
-- ARGV[9..] lease ids
--
-- Returns {lost, stale}: lost = the lease ids that were no longer there;
-- stale = 1 if the replica's heartbeat had expired (its waiters may have
-- been dropped from the queue: they should ask again), else 0.
local st = semaphore_state()
local now, replica = st.now, ARGV[8]
redis.call('ZREMRANGEBYSCORE', st.leases, '-inf', now)
local stale = 0
if replica ~= '' then
  local alive = tonumber(redis.call('ZSCORE', st.replicas, replica) or '0') or 0
  if alive < now then
    stale = 1
  end
  redis.call('ZADD', st.replicas, now + st.waiter_ttl, replica)
  keep_ttl(st.waiter_ttl, st.queue, st.replicas)
end
redis.call('ZREMRANGEBYSCORE', st.replicas, '-inf', now)
local lost = {}
for i = 9, #ARGV do
  if redis.call('ZSCORE', st.leases, ARGV[i]) then
    redis.call('ZADD', st.leases, 'XX', now + st.lease_ttl, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #ARGV >= 9 then
  keep_ttl(st.lease_ttl, st.leases)
end
if redis.call('ZCARD', st.queue) > 0 then
  local holders = redis.call('ZCARD', st.leases)
  if holders < st.size then
    serve(st, holders, {}, false)
  end
end
return {lost, stale}
