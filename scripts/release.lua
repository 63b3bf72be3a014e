-- release.lua: release leases and withdraw waiters, by id. Idempotent: an id
-- that is not there (already released, expired, or never granted) is skipped.
-- An acquire whose outcome is unknown (timeout, error) is undone by releasing
-- its id: the id was made by the client before the call, so a retried or late
-- acquire can never leave a phantom holder.
--
-- KEYS[1]  leases
-- KEYS[2]  queue
-- KEYS[3]  waiters
-- ARGV[1]  wake channel
-- ARGV[2..] ids
--
-- Returns the number of leases released.
local leases, queue, waiters, channel = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local head = redis.call('ZRANGE', queue, 0, 0)[1]
local released = 0
for i = 2, #ARGV do
  released = released + redis.call('ZREM', leases, ARGV[i])
  redis.call('ZREM', queue, ARGV[i])
  redis.call('ZREM', waiters, ARGV[i])
end
if released > 0 or redis.call('ZRANGE', queue, 0, 0)[1] ~= head then
  wake_head(queue, channel)
end
return released
