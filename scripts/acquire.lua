-- acquire.lua: take slots of a lease semaphore, each (optionally) with a
-- token of the budget's bucket, atomically, for callers at the head of a FIFO
-- queue shared by every replica. One call carries the requests of many
-- callers of one replica (a batch); each is decided as if alone, in order.
--
-- A request first recognises its own past: an id that holds a lease is
-- answered "granted" again (a client that resent the call after a lost
-- reply), and an id that was released or withdrawn (a tombstone in `gone`)
-- is refused, so a call that arrives after its caller gave up never leaves a
-- phantom lease or queue place. Then a caller that cannot be granted at once
-- joins the tail of the queue; a caller already queued keeps its place. Only
-- the head may be granted: it gets a lease (and a token) when a slot is free
-- and (with a rate) a token is available NOW. The call is sent right after
-- the grant, so tokens are spent when calls really go and sends cannot bunch
-- up behind the semaphore. When something frees the head's turn, the head is
-- woken on its own replica's channel.
--
-- Waiters are kept alive per replica, not per waiter: a waiter id is
-- "<replica>.<random>", and a waiter whose replica's heartbeat (in
-- `replicas`) has expired is dropped when it reaches the head.
--
-- KEYS[1]  leases:   zset lease id -> expiry (microseconds, Redis time)
-- KEYS[2]  queue:    zset waiter id -> ticket (FIFO order)
-- KEYS[3]  replicas: zset replica -> heartbeat expiry
-- KEYS[4]  gone:     zset released or withdrawn id -> tombstone expiry
-- KEYS[5]  clock:    string, the latest Redis time a script used (see common.lua)
-- KEYS[6]  bucket:   string, TAT of the budget's token bucket (see reserve.lua)
-- ARGV[1]  size: C, the number of slots
-- ARGV[2]  lease_ttl: microseconds
-- ARGV[3]  waiter_ttl: microseconds a replica's heartbeat lasts
-- ARGV[4]  interval: microseconds per token; 0 = no rate, slots only
-- ARGV[5]  burst
-- ARGV[6]  wake prefix: a replica's wake channel is this followed by its id
-- ARGV[7]  PUBLISH or SPUBLISH
-- ARGV[8..] one triple per request, all of one replica:
--          id (the lease id, made by the client; also its waiter id),
--          max_wait (microseconds the caller can still wait; -1 = no limit),
--          mode ("wait" joins the queue; "try" only takes a free slot, never queues)
--
-- Returns four integers per request, {status, reason, a, b}:
--   status  1 granted: a = microseconds the lease has left, b = the grant's
--             Redis time (also for a repeat of a request that was granted)
--           0 queued: reason 1 = others ahead (wait to be woken),
--                     2 = no free slot (a = microseconds until the first lease expires),
--                     3 = no token yet (a = microseconds until there is one)
--          -1 too late: the earliest grant is later than max_wait (reason 3,
--             a = microseconds until the token): left the queue, nothing taken
--          -2 busy, try mode: not available now (reason and a as for queued)
--          -3 gone: the id was released or withdrawn before this call ran
local leases, queue, replicas, gone, bucket = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6]
local size, lease_ttl, waiter_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval, burst, wake_prefix, pub = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local now = clock(KEYS[5])

local wake = redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) > 0
local queued = redis.call('ZCARD', queue)
local holders = redis.call('ZCARD', leases)
local granted, joined, beaten = false, false, false

-- The heartbeat of the calling replica, once per call: it is alive.
local function beat(id)
  if not beaten then
    redis.call('ZADD', replicas, now + waiter_ttl, owner(id))
    beaten = true
  end
end

local function acquire_one(id, max_wait, try)
  if redis.call('ZSCORE', gone, id) then
    return -3, 0, 0, 0
  end
  local expiry = redis.call('ZSCORE', leases, id)
  if expiry then
    expiry = tonumber(expiry) -- live: expired leases were dropped above
    return 1, 0, expiry - now, expiry - lease_ttl
  end

  -- Our place: rank in the queue, or behind everyone if not queued yet.
  local rank = queued > 0 and redis.call('ZRANK', queue, id) or nil
  if (rank or queued) > 0 then
    -- Someone is ahead. A dead replica's waiters must not block us.
    if not try then beat(id) end
    local dropped = drop_dead_heads(queue, replicas, now)
    if dropped > 0 then
      queued = queued - dropped
      wake = true
      if rank then rank = redis.call('ZRANK', queue, id) end
    end
  end
  local ahead = rank or queued

  local new_tat, allow_at = 0, now
  if interval > 0 then
    new_tat, allow_at = gcra(bucket, now, interval, burst, 1)
    -- Waiters ahead may still leave, so only our own token is certain.
    if max_wait >= 0 and allow_at - now > max_wait then
      if rank then
        redis.call('ZREM', queue, id)
        queued = queued - 1
        wake = wake or rank == 0
      end
      return -1, 3, allow_at - now, 0
    end
  end

  local reason, hint = 0, 0
  if ahead > 0 then
    reason = 1
  elseif holders >= size then
    local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
    reason, hint = 2, tonumber(first[2]) - now
  elseif allow_at > now then
    reason, hint = 3, allow_at - now
  end
  if reason ~= 0 then
    if try then return -2, reason, hint, 0 end
    beat(id)
    if not rank then
      local last = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')
      redis.call('ZADD', queue, (tonumber(last[2]) or 0) + 1, id)
      queued = queued + 1
    end
    joined = true
    return 0, reason, hint, 0
  end

  redis.call('ZADD', leases, now + lease_ttl, id)
  holders = holders + 1
  granted = true
  if interval > 0 then
    gcra_store(bucket, now, new_tat)
  end
  if rank then
    redis.call('ZREM', queue, id)
    queued = queued - 1
    wake = true
  end
  return 1, 0, lease_ttl, now
end

local out = {}
for i = 8, #ARGV, 3 do
  local status, reason, a, b = acquire_one(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == 'try')
  out[#out + 1] = status
  out[#out + 1] = reason
  out[#out + 1] = a
  out[#out + 1] = b
end
if granted then
  keep_ttl(lease_ttl, leases)
end
if joined then
  keep_ttl(waiter_ttl, queue, replicas)
end
if wake and queued > 0 then
  wake_head(queue, replicas, now, wake_prefix, pub)
end
return out
