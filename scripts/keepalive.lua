-- keepalive.lua: renew the leases and queue places a replica holds, in one
-- call for all of them. Renewal never resurrects: a lease that has already
-- expired (or was released) is reported lost, not re-created. It also drops
-- whatever expired (a dead replica's leases and waiters) and wakes the head of
-- the queue if that freed anything.
--
-- KEYS[1]  leases
-- KEYS[2]  queue
-- KEYS[3]  waiters
-- ARGV[1]  lease_ttl: microseconds
-- ARGV[2]  waiter_ttl: microseconds
-- ARGV[3]  wake channel
-- ARGV[4]  n: how many of the ids that follow are leases
-- ARGV[5..4+n] lease ids; ARGV[5+n..] waiter ids
--
-- Returns {lost_leases, lost_waiters}: the ids that were no longer there.
local leases, queue, waiters = KEYS[1], KEYS[2], KEYS[3]
local lease_ttl, waiter_ttl, channel, n = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now = now_us()
purge(leases, queue, waiters, now, channel)
local lost_leases, lost_waiters = {}, {}
for i = 5, 4 + n do
  if redis.call('ZSCORE', leases, ARGV[i]) then
    redis.call('ZADD', leases, 'XX', now + lease_ttl, ARGV[i])
  else
    lost_leases[#lost_leases + 1] = ARGV[i]
  end
end
for i = 5 + n, #ARGV do
  if redis.call('ZSCORE', queue, ARGV[i]) then
    redis.call('ZADD', waiters, 'XX', now + waiter_ttl, ARGV[i])
  else
    lost_waiters[#lost_waiters + 1] = ARGV[i]
  end
end
if n > 0 then
  keep_ttl(lease_ttl, leases)
end
if #ARGV > 4 + n then
  keep_ttl(waiter_ttl, waiters, queue)
end
return {lost_leases, lost_waiters}
