-- keepalive.lua: one call per replica per round. It renews the leases the
-- replica holds and, while it has callers queued, its heartbeat: waiters are
-- kept alive per replica, never one by one. Renewal never resurrects: a lease
-- that has already expired (or was released) is reported lost, not
-- re-created. A heartbeat round also drops expired leases and serves the
-- queue with the slots that freed (see serve in common.lua), dropping dead
-- replicas' waiters that reached the head; with no replica and no ids it is
-- that upkeep (and the health check) alone; with lease ids only, it only
-- renews them (a replica's lease round, or a waiter confirming a slot handed
-- over to it).
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
-- A call with lease ids only (no heartbeat) just renews them: a waiter
-- confirming a slot handed to it, or a replica's lease round. Upkeep is for
-- heartbeat rounds and checks (and every other script does its share).
local upkeep = replica ~= '' or #ARGV < 9
local stale = 0
if upkeep then
  redis.call('ZREMRANGEBYSCORE', st.leases, '-inf', now)
end
if replica ~= '' then
  local alive = tonumber(redis.call('ZSCORE', st.replicas, replica) or '0') or 0
  if alive < now then
    stale = 1
  end
  redis.call('ZADD', st.replicas, now + st.waiter_ttl, replica)
  keep_ttl(st.waiter_ttl, false, st.queue, st.replicas)
end
if upkeep then
  redis.call('ZREMRANGEBYSCORE', st.replicas, '-inf', now)
end
local lost = {}
for i = 9, #ARGV do
  local expiry = tonumber(redis.call('ZSCORE', st.leases, ARGV[i]) or '0') or 0
  if expiry > now then
    redis.call('ZADD', st.leases, 'XX', now + st.lease_ttl, ARGV[i])
  else
    if expiry > 0 then
      redis.call('ZREM', st.leases, ARGV[i]) -- expired: never resurrected
    end
    lost[#lost + 1] = ARGV[i]
  end
end
if #ARGV >= 9 then
  keep_ttl(st.lease_ttl, false, st.leases)
end
local queued = upkeep and redis.call('ZCARD', st.queue) or 0
if queued > 0 then
  local holders = redis.call('ZCARD', st.leases)
  if holders < st.size then
    serve(st, holders, queued, {}, false)
  end
end
return {lost, stale}
