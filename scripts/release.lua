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
local released, wake = 0, false
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', leases, id) == 1 then
    released = released + 1
    wake = true
  elseif redis.call('ZSCORE', queue, id) then
    -- A waiter withdrawing; if it was the head, the next one is.
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    redis.call('ZREM', queue, id)
    redis.call('ZREM', waiters, id)
    wake = wake or head == id
  end
end
if wake then
  wake_head(queue, channel)
end
return released
