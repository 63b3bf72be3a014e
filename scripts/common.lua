-- common.lua: helpers prepended to every sluice script (internal/redisstate
-- joins them). Time is Redis's own clock, in integer microseconds; replica
-- clocks never enter a decision. Integers stay below 2^53, so Lua numbers
-- hold them exactly and Redis returns them as integer replies.

-- The time of a decision: Redis TIME, but never earlier than the latest time
-- a script of this budget used (kept in the clock key). A backward step of
-- Redis's clock then holds time still until the clock catches up, instead of
-- moving decisions into the past. The key lives ten minutes after last use.
-- (One SET ... GET in the common case: Redis 6.2 or later.)
--
-- grants, if given, is the budget's grant counter: the first call of the
-- budget in each hour (by Redis time) keeps it alive for two more days, so
-- granting calls need not check its TTL (see count_grants).
local function clock(key, grants)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('SET', key, string.format('%d', now), 'PX', 600000, 'GET') or '0') or 0
  if last > now then
    redis.call('SET', key, string.format('%d', last), 'PX', 600000)
    now = last
  end
  if grants and math.floor(now / 3600000000) ~= math.floor(last / 3600000000) then
    redis.call('PEXPIRE', grants, 172800000)
  end
  return now
end

-- Make sure keys live at least ttl microseconds more: when the first has
-- less left, give them all twice that. One PTTL in the common case; a key
-- never outlives 2*ttl after its last use, and never expires under a live
-- member (whatever TTLs other replicas use: each ensures its own). fresh
-- says the first key did not exist before this call (so it has no TTL, and
-- all its members are this call's): then the PTTL is skipped. Returns true
-- if it set the TTLs.
local function keep_ttl(ttl, fresh, ...)
  local ms = math.ceil(ttl / 1000)
  local keys = {...}
  if fresh or redis.call('PTTL', keys[1]) < ms then
    for _, k in ipairs(keys) do
      redis.call('PEXPIRE', k, 2 * ms)
    end
    return true
  end
  return false
end

-- GCRA (the virtual-scheduling token bucket). key holds the theoretical
-- arrival time (TAT) in microseconds. Taking n tokens moves TAT to
-- max(TAT, now) + n*interval; the tokens may be used from
-- allow_at = that - burst*interval on. Returns new_tat, allow_at.
local function gcra(key, now, interval, burst, n)
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  return new_tat, new_tat - burst * interval
end

local function gcra_store(key, now, new_tat)
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
end

-- The replica that owns a waiter or lease id (the part before the dot), and
-- the rest, which is all its replica needs to be told.
local function owner(id)
  local rep = string.match(id, '^[^.]*')
  return rep, string.sub(id, #rep + 2)
end

-- Count n grants in the budget's grant counter (the status page reads its
-- rate): one INCRBY per script call that grants. A new counter gets a TTL
-- of two days at once; after that the clock (see clock) renews it hourly
-- while the budget is used, so the counter lives one to two days after the
-- budget's last use.
local function count_grants(st, n)
  if redis.call('INCRBY', st.grants, n) == n then
    redis.call('PEXPIRE', st.grants, 172800000)
  end
end

-- Serve the queue: while a slot is free, grant it to the head of the queue
-- (with a token, when the budget has a rate) and hand it over on the
-- channel of the one replica that owns the head ("<id>=<grant time>"): the
-- slot is reserved for it at once, for half a waiter TTL until its replica
-- confirms it with a renewal. (The message names the waiter without its
-- replica's part, and the time in hex: every byte is sent once per
-- admission.) A head whose replica's heartbeat has expired is dead: it is
-- dropped and the next one served. A head that must wait for a token is
-- woken instead ("<id>"), if it may not know yet (it just became the head,
-- or nudge is set): it asks and learns when. At most 100 heads per call. st
-- holds the budget's keys and configuration (leases, queue, replicas,
-- bucket, size, lease_ttl, interval, burst, wake_prefix, pub, now); queued
-- is the number of waiters in the queue; quiet is a set of ids not to
-- publish to (the callers of this very script, who get the answer). Returns
-- the number of holders after it and the number of waiters it took off the
-- queue.
local function serve(st, holders, queued, quiet, nudge)
  local fresh = holders == 0 -- the leases key does not exist yet
  local granted, changed, removed = 0, false, 0
  for _ = 1, 100 do
    if holders >= st.size then break end
    -- The head, taken off the queue at once (one command, where looking
    -- and then removing are two); a head that must wait is put back with
    -- its own ticket, so its place does not change.
    local popped = redis.call('ZPOPMIN', st.queue)
    local head, ticket = popped[1], popped[2]
    if not head then break end
    queued = queued - 1
    local function put_back()
      redis.call('ZADD', st.queue, ticket, head)
      if queued <= 0 then
        -- The pop emptied the queue, which took its TTL along.
        redis.call('PEXPIRE', st.queue, 2 * math.ceil(st.waiter_ttl / 1000))
      end
    end
    local rep, local_id = owner(head)
    local alive = tonumber(redis.call('ZSCORE', st.replicas, rep) or '0') or 0
    if alive < st.now then
      removed, changed = removed + 1, true
    elseif not quiet[head] and alive < st.now + math.floor(st.waiter_ttl / 2) then
      -- Its replica has missed a heartbeat or two: it may have died. Hand
      -- it nothing until it beats again (or is dropped as dead); the next
      -- keepalive round of any replica serves again.
      put_back()
      break
    else
      if st.interval > 0 then
        local new_tat, allow_at = gcra(st.bucket, st.now, st.interval, st.burst, 1)
        if allow_at > st.now then
          put_back()
          if (nudge or changed) and not quiet[head] then
            redis.call(st.pub, st.wake_prefix .. rep, local_id)
          end
          break
        end
        gcra_store(st.bucket, st.now, new_tat)
      end
      removed = removed + 1
      if quiet[head] then
        -- A caller of this very script: it gets the answer now.
        redis.call('ZADD', st.leases, st.now + st.lease_ttl, head)
      else
        -- Handed over with a short life, which its replica confirms (a
        -- renewal) when the message arrives: a slot handed to a replica
        -- that has just died comes back within it, not a whole lease TTL.
        redis.call('ZADD', st.leases, st.now + math.min(st.lease_ttl, math.floor(st.waiter_ttl / 2)), head)
        redis.call(st.pub, st.wake_prefix .. rep, local_id .. '=' .. string.format('%x', st.now))
      end
      holders = holders + 1
      granted, changed = granted + 1, true
    end
  end
  if granted > 0 then
    keep_ttl(st.lease_ttl, fresh, st.leases)
    count_grants(st, granted)
  end
  return holders, removed
end

-- The semaphore's scripts (acquire, release, keepalive) share their KEYS and
-- the first seven ARGV:
--
-- KEYS[1]  leases:   zset lease id -> expiry (microseconds, Redis time)
-- KEYS[2]  queue:    zset waiter id -> ticket (FIFO order)
-- KEYS[3]  replicas: zset replica -> heartbeat expiry
-- KEYS[4]  gone:     zset released or withdrawn id -> tombstone expiry
-- KEYS[5]  clock:    string, the latest Redis time a script used
-- KEYS[6]  bucket:   string, TAT of the budget's token bucket (see reserve.lua)
-- KEYS[7]  grants:   string, the number of grants so far (the status page
--                    reads its rate); it lives a day or two after the last grant
-- ARGV[1]  size: C, the number of slots
-- ARGV[2]  lease_ttl: microseconds
-- ARGV[3]  waiter_ttl: microseconds a replica's heartbeat lasts
-- ARGV[4]  interval: microseconds per token; 0 = no rate, slots only
-- ARGV[5]  burst
-- ARGV[6]  wake prefix: a replica's wake channel is this followed by its id
-- ARGV[7]  PUBLISH or SPUBLISH (Redis Cluster 7+)
--
-- Waiter and lease ids are "<replica>.<random>".
local function semaphore_state()
  local st = {
    leases = KEYS[1], queue = KEYS[2], replicas = KEYS[3], gone = KEYS[4], bucket = KEYS[6], grants = KEYS[7],
    size = tonumber(ARGV[1]), lease_ttl = tonumber(ARGV[2]), waiter_ttl = tonumber(ARGV[3]),
    interval = tonumber(ARGV[4]), burst = tonumber(ARGV[5]), wake_prefix = ARGV[6], pub = ARGV[7],
  }
  st.now = clock(KEYS[5], KEYS[7])
  return st
end
