-- common.lua: helpers prepended to every sluice script (internal/redisstate
-- joins them). Time is Redis's own clock, in integer microseconds; replica
-- clocks never enter a decision. Integers stay below 2^53, so Lua numbers
-- hold them exactly and Redis returns them as integer replies.

-- The time of a decision: Redis TIME, but never earlier than the latest time
-- a script of this budget used (kept in the clock key). A backward step of
-- Redis's clock then holds time still until the clock catches up, instead of
-- moving decisions into the past. The key lives ten minutes after last use.
local function clock(key)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', key) or '0') or 0
  if now < last then
    now = last
  end
  redis.call('SET', key, string.format('%d', now), 'PX', 600000)
  return now
end

-- Make sure keys live at least ttl microseconds more: when the first has
-- less left, give them all twice that. One PTTL in the common case; a key
-- never outlives 2*ttl after its last use, and never expires under a live
-- member (whatever TTLs other replicas use: each ensures its own).
local function keep_ttl(ttl, ...)
  local ms = math.ceil(ttl / 1000)
  local keys = {...}
  if redis.call('PTTL', keys[1]) < ms then
    for _, k in ipairs(keys) do
      redis.call('PEXPIRE', k, 2 * ms)
    end
  end
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

-- The replica that owns a waiter or lease id: the part before the dot.
local function owner(id)
  return string.match(id, '^[^.]*')
end

-- Publish the id of the waiter at the head of the queue to the channel of
-- the replica that owns it (and to no other), so that replica retries it at
-- once. A head whose replica's heartbeat has expired is dead: it is dropped
-- and the next one looked at (at most 100 per call; the next call goes on).
-- pub is PUBLISH or SPUBLISH (Redis Cluster 7+: the channel stays on the
-- budget's shard). Returns the number of waiters dropped.
local function wake_head(queue, replicas, now, wake_prefix, pub)
  for i = 1, 100 do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then
      return i - 1
    end
    local rep = owner(head)
    local alive = tonumber(redis.call('ZSCORE', replicas, rep) or '0') or 0
    if alive >= now then
      redis.call(pub, wake_prefix .. rep, head)
      return i - 1
    end
    redis.call('ZREM', queue, head)
  end
  return 100
end

-- Drop the heads of the queue whose replica is dead (see wake_head), without
-- waking anyone. Returns the number dropped.
local function drop_dead_heads(queue, replicas, now)
  for i = 1, 100 do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then
      return i - 1
    end
    local alive = tonumber(redis.call('ZSCORE', replicas, owner(head)) or '0') or 0
    if alive >= now then
      return i - 1
    end
    redis.call('ZREM', queue, head)
  end
  return 100
end
