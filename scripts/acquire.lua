-- acquire.lua: take slots of a lease semaphore, each (optionally) with a
-- token of the budget's bucket, atomically, for callers at the head of a FIFO
-- queue shared by every replica. One call carries the requests of many
-- callers of one replica (a batch); each is decided as if alone, in order.
--
-- A caller that cannot be granted at once joins the tail of the queue; a
-- caller already queued keeps its place. Only the head may be granted: it
-- gets a lease (and a token) when a slot is free and (with a rate) a token
-- is available NOW. The call is sent right after the grant, so tokens are
-- spent when calls really go and sends cannot bunch up behind the semaphore.
-- When a grant leaves a new head, it is woken on the wake channel.
--
-- KEYS[1]  leases:  zset lease id -> expiry (microseconds, Redis time)
-- KEYS[2]  queue:   zset waiter id -> ticket (FIFO order)
-- KEYS[3]  waiters: zset waiter id -> expiry (a waiter that stops renewing is dropped)
-- KEYS[4]  bucket:  string, TAT of the budget's token bucket (see reserve.lua)
-- ARGV[1]  size: C, the number of slots
-- ARGV[2]  lease_ttl: microseconds
-- ARGV[3]  waiter_ttl: microseconds
-- ARGV[4]  interval: microseconds per token; 0 = no rate, slots only
-- ARGV[5]  burst
-- ARGV[6]  wake channel
-- ARGV[7..] one triple per request:
--          id (the lease id, made by the client; also its waiter id),
--          max_wait (microseconds the caller can still wait; -1 = no limit),
--          mode ("wait" joins the queue; "try" only takes a free slot, never queues)
--
-- Returns three integers per request, {status, reason, hint}:
--   status  1 granted: reason = the grant's Redis time (0 when this request
--             repeats one that already granted: the lease is the caller's)
--           0 waiting: reason 1 = others ahead (wait to be woken),
--                      2 = no free slot (hint: microseconds until the first lease expires),
--                      3 = no token yet (hint: microseconds until there is one)
--          -1 the earliest grant is later than max_wait: left the queue, nothing taken
--          -2 try mode: not available now
local leases, queue, waiters, bucket = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local size, lease_ttl, waiter_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval, burst, channel = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local now = now_us()

local queued = purge(leases, queue, waiters, now, channel)
local holders = redis.call('ZCARD', leases)
local dequeued, granted, joined = false, false, false

local function acquire_one(id, max_wait, try)
  -- Our place: rank in the queue, or behind everyone if not queued yet.
  local rank = queued > 0 and redis.call('ZRANK', queue, id) or nil
  local ahead = rank or queued

  local new_tat, allow_at = 0, now
  if interval > 0 then
    new_tat, allow_at = gcra(bucket, now, interval, burst, 1)
    -- Waiters ahead may still leave, so only our own token is certain.
    if max_wait >= 0 and allow_at - now > max_wait then
      if rank then
        leave(queue, waiters, id, channel)
        queued = queued - 1
      end
      return -1, 3, allow_at - now
    end
  end

  local reason, hint = 0, 0
  if ahead > 0 then
    reason = 1
  elseif holders >= size then
    if redis.call('ZSCORE', leases, id) then
      return 1, 0, 0 -- a repeat of a request that was granted
    end
    local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
    reason, hint = 2, tonumber(first[2]) - now
  elseif allow_at > now then
    reason, hint = 3, allow_at - now
  end
  if reason ~= 0 then
    if try then return -2, reason, hint end
    if not rank then
      local last = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')
      redis.call('ZADD', queue, (tonumber(last[2]) or 0) + 1, id)
      queued = queued + 1
    end
    redis.call('ZADD', waiters, now + waiter_ttl, id)
    joined = true
    return 0, reason, hint
  end

  if redis.call('ZADD', leases, 'NX', now + lease_ttl, id) == 0 then
    return 1, 0, 0 -- a repeat of a request that was granted
  end
  holders = holders + 1
  granted = true
  if interval > 0 then
    gcra_store(bucket, now, new_tat)
  end
  if rank then
    redis.call('ZREM', queue, id)
    redis.call('ZREM', waiters, id)
    queued = queued - 1
    dequeued = true
  end
  return 1, now, 0
end

local out = {}
for i = 7, #ARGV, 3 do
  local status, reason, hint = acquire_one(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == 'try')
  out[#out + 1] = status
  out[#out + 1] = reason
  out[#out + 1] = hint
end
if granted then
  keep_ttl(lease_ttl, leases)
end
if joined then
  keep_ttl(waiter_ttl, waiters, queue)
end
if dequeued then
  wake_head(queue, channel)
end
return out
