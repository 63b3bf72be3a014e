-- acquire.lua: take a slot of a lease semaphore, and (optionally) a token of
-- the budget's bucket with it, atomically, for the caller at the head of a
-- FIFO queue shared by every replica.
--
-- A caller that cannot be granted at once joins the tail of the queue; a
-- caller already queued keeps its place. Only the head may be granted: it
-- gets a lease (and a token) when a slot is free and (with a rate) a token
-- is available NOW. The call is sent right after the grant, so tokens
-- are spent when calls really go and sends cannot bunch up behind the
-- semaphore. After a grant the next head is woken on the wake channel.
--
-- KEYS[1]  leases:  zset lease id -> expiry (microseconds, Redis time)
-- KEYS[2]  queue:   zset waiter id -> ticket (FIFO order)
-- KEYS[3]  waiters: zset waiter id -> expiry (a waiter that stops renewing is dropped)
-- KEYS[4]  bucket:  string, TAT of the budget's token bucket (see reserve.lua)
-- ARGV[1]  id: the lease id, made by the client; also its waiter id
-- ARGV[2]  size: C, the number of slots
-- ARGV[3]  lease_ttl: microseconds
-- ARGV[4]  waiter_ttl: microseconds
-- ARGV[5]  max_wait: microseconds the caller can still wait; -1 = no limit
-- ARGV[6]  interval: microseconds per token; 0 = no rate, slots only
-- ARGV[7]  burst
-- ARGV[8]  mode: "wait" joins the queue; "try" only takes a free slot, never queues
-- ARGV[9]  wake channel
--
-- Returns {status, reason, hint}
--   status  1 granted: reason = the grant's Redis time (0 when this call is a
--           retry of one that already granted; the lease is the caller's)
--           0 waiting: reason 1 = others ahead (wait to be woken),
--                      2 = no free slot (hint: microseconds until the first lease expires),
--                      3 = no token yet (hint: microseconds until there is one)
--          -1 the earliest grant is later than max_wait: left the queue, nothing taken
--          -2 try mode: not available now
local leases, queue, waiters, bucket = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
local size, lease_ttl, waiter_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local max_wait, interval, burst = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local try, channel = ARGV[8] == 'try', ARGV[9]
local now = now_us()

purge(leases, queue, waiters, now, channel)

if redis.call('ZSCORE', leases, id) then
  return {1, 0, 0}
end

-- Our place: rank in the queue, or behind everyone if not queued yet.
local rank = redis.call('ZRANK', queue, id)
local ahead = rank or redis.call('ZCARD', queue)

local new_tat, allow_at = 0, now
if interval > 0 then
  new_tat, allow_at = gcra(bucket, now, interval, burst, 1)
  -- Waiters ahead may still leave, so only our own token is certain.
  if max_wait >= 0 and allow_at - now > max_wait then
    if rank then leave(queue, waiters, id, channel) end
    return {-1, 3, allow_at - now}
  end
end

local reason, hint = 0, 0
if ahead > 0 then
  reason = 1
elseif redis.call('ZCARD', leases) >= size then
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  reason, hint = 2, tonumber(first[2]) - now
elseif allow_at > now then
  reason, hint = 3, allow_at - now
end
if reason ~= 0 then
  if try then return {-2, reason, hint} end
  if not rank then
    local last = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')
    redis.call('ZADD', queue, (tonumber(last[2]) or 0) + 1, id)
  end
  redis.call('ZADD', waiters, now + waiter_ttl, id)
  expire_zset(waiters, now, queue)
  return {0, reason, hint}
end

redis.call('ZADD', leases, now + lease_ttl, id)
expire_zset(leases, now)
if interval > 0 then
  gcra_store(bucket, now, new_tat)
end
if rank then
  redis.call('ZREM', queue, id)
  redis.call('ZREM', waiters, id)
  wake_head(queue, channel)
end
return {1, now, 0}
