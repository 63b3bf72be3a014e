-- acquire.lua: take slots of a lease semaphore, each (optionally) with a
-- token of the budget's bucket, atomically, for callers at the head of a FIFO
-- queue shared by every replica. One call carries the requests of many
-- callers of one replica (a batch); each is decided as if alone, in order.
--
-- A request first recognises its own past: an id that holds a lease is
-- answered "granted" again (a client that resent the call after a lost
-- reply, or a waiter the queue was served to), and an id that was released
-- or withdrawn (a tombstone in `gone`) is refused, so a call that arrives
-- after its caller gave up never leaves a phantom lease or queue place. Then
-- a caller that cannot be granted at once joins the tail of the queue; a
-- caller already queued keeps its place. Only the head may be granted: it
-- gets a lease (and a token) when a slot is free and (with a rate) a token is
-- available NOW. The call is sent right after the grant, so tokens are spent
-- when calls really go and sends cannot bunch up behind the semaphore.
-- Queued callers are served by whichever script frees a slot (see serve in
-- common.lua): they need not ask again.
--
-- KEYS, ARGV[1..7]: see semaphore_state in common.lua.
-- ARGV[8..] one triple per request, all of one replica:
--          id (the lease id, made by the client; also its waiter id),
--          max_wait (microseconds the caller can still wait; -1 = no limit),
--          mode ("wait" joins the queue; "try" only takes a free slot, never queues)
--
-- Returns four integers per request, {status, reason, a, b}:
--   status  1 granted: a = microseconds the lease has left, b = the grant's
--             Redis time (also for a repeat, or a grant made by serve)
--           0 queued: reason 1 = others ahead (wait to be served or woken),
--                     2 = no free slot (a = microseconds until the first lease expires),
--                     3 = no token yet (a = microseconds until there is one)
--          -1 too late: the earliest grant is later than max_wait (reason 3,
--             a = microseconds until the token): left the queue, nothing taken
--          -2 busy, try mode: not available now (reason and a as for queued)
--          -3 gone: the id was released or withdrawn before this call ran
local st = semaphore_state()
local now = st.now
local quiet = {}
for i = 8, #ARGV, 3 do
  quiet[ARGV[i]] = true
end

-- Expired leases (of holders that died) only matter when they fill the
-- semaphore: drop them then.
local holders = redis.call('ZCARD', st.leases)
if holders >= st.size then
  holders = holders - redis.call('ZREMRANGEBYSCORE', st.leases, '-inf', now)
end
-- No holders: the leases key does not exist, so a grant here creates it
-- (and sets its TTL without asking for it).
local fresh = holders == 0
local queued = redis.call('ZCARD', st.queue)
if queued > 0 and holders < st.size then
  local removed
  holders, removed = serve(st, holders, queued, quiet, false)
  queued = queued - removed
end
local granted, joined, beaten, left_head = 0, false, false, false
local last_ticket -- of the queue's tail, once known

local function acquire_one(id, max_wait, try)
  if redis.call('ZSCORE', st.gone, id) then
    return -3, 0, 0, 0
  end
  -- (No holders: it holds nothing, no need to ask.)
  local expiry = holders > 0 and tonumber(redis.call('ZSCORE', st.leases, id) or '0') or 0
  if expiry > now then
    -- A repeat: a client that resent the call after a lost reply, or a
    -- waiter asking again before the message of a slot handed over to it
    -- arrived (its token timer fired, a resubscription woke it). A
    -- hand-over lives only half a waiter TTL until confirmed; the waiter
    -- is alive and asking, so confirm it here, as keepalive would: its
    -- caller gets a whole lease TTL, not a lease already over.
    local life = math.min(st.lease_ttl, math.floor(st.waiter_ttl / 2))
    if expiry - now <= life then
      redis.call('ZADD', st.leases, 'XX', now + st.lease_ttl, id)
      return 1, 0, st.lease_ttl, expiry - life
    end
    return 1, 0, expiry - now, expiry - st.lease_ttl
  elseif expiry > 0 then
    -- Granted once, expired before its caller heard of it: as if never.
    redis.call('ZREM', st.leases, id)
    holders = holders - 1
  end

  -- Our place: rank in the queue, or behind everyone if not queued yet.
  local rank = queued > 0 and redis.call('ZRANK', st.queue, id) or nil
  local new_tat, allow_at = 0, now
  if st.interval > 0 then
    new_tat, allow_at = gcra(st.bucket, now, st.interval, st.burst, 1)
    -- Waiters ahead may still leave, so only our own token is certain.
    if max_wait >= 0 and allow_at - now > max_wait then
      if rank then
        redis.call('ZREM', st.queue, id)
        queued = queued - 1
        left_head = left_head or rank == 0
      end
      return -1, 3, allow_at - now, 0
    end
  end

  local reason, hint = 0, 0
  if (rank or queued) > 0 then
    reason = 1
  elseif holders >= st.size then
    local first = redis.call('ZRANGE', st.leases, 0, 0, 'WITHSCORES')
    reason, hint = 2, tonumber(first[2]) - now
  elseif allow_at > now then
    reason, hint = 3, allow_at - now
  end
  if reason ~= 0 then
    if try then return -2, reason, hint, 0 end
    if not rank then
      if not beaten then
        redis.call('ZADD', st.replicas, now + st.waiter_ttl, (owner(id)))
        beaten = true
      end
      if not last_ticket then
        local last = redis.call('ZRANGE', st.queue, -1, -1, 'WITHSCORES')
        last_ticket = tonumber(last[2]) or 0
      end
      last_ticket = last_ticket + 1
      redis.call('ZADD', st.queue, last_ticket, id)
      queued = queued + 1
      joined = true
    end
    return 0, reason, hint, 0
  end

  redis.call('ZADD', st.leases, now + st.lease_ttl, id)
  holders = holders + 1
  granted = granted + 1
  if st.interval > 0 then
    gcra_store(st.bucket, now, new_tat)
  end
  if rank then
    redis.call('ZREM', st.queue, id)
    queued = queued - 1
  end
  return 1, 0, st.lease_ttl, now
end

local out = {}
for i = 8, #ARGV, 3 do
  local status, reason, a, b = acquire_one(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == 'try')
  out[#out + 1] = status
  out[#out + 1] = reason
  out[#out + 1] = a
  out[#out + 1] = b
end
if granted > 0 then
  keep_ttl(st.lease_ttl, fresh, st.leases)
  count_grants(st, granted)
end
if joined then
  keep_ttl(st.waiter_ttl, false, st.queue, st.replicas)
end
if left_head and queued > 0 then
  serve(st, holders, queued, quiet, true)
end
return out
