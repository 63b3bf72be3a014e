-- common.lua: helpers prepended to every sluice script (see scripts.go).
-- Time is Redis's own clock, in integer microseconds; replica clocks never
-- enter a decision. Integers stay below 2^53, so Lua numbers hold them
-- exactly and Redis returns them as integer replies without truncation.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
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

-- Publish the id of the waiter at the head of the queue, if any, so the
-- replica that holds it retries at once.
local function wake_head(queue, channel)
  local head = redis.call('ZRANGE', queue, 0, 0)
  if head[1] then
    redis.call('PUBLISH', channel, head[1])
  end
end

-- Drop expired leases and waiters (a holder or waiter that died, or stopped
-- renewing). When that frees anything, wake the head of the queue. Returns
-- the length of the queue.
local function purge(leases, queue, waiters, now, channel)
  local queued = redis.call('ZCARD', queue)
  local head_changed = false
  if queued > 0 then
    local gone = redis.call('ZRANGEBYSCORE', waiters, '-inf', now)
    if #gone > 0 then
      local head = redis.call('ZRANGE', queue, 0, 0)[1]
      for _, w in ipairs(gone) do
        queued = queued - redis.call('ZREM', queue, w)
      end
      redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
      head_changed = redis.call('ZRANGE', queue, 0, 0)[1] ~= head
    end
  end
  local dropped = redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if (dropped > 0 or head_changed) and queued > 0 then
    wake_head(queue, channel)
  end
  return queued
end

-- Remove a waiter from the queue; wake the next head if it was the head.
local function leave(queue, waiters, id, channel)
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  redis.call('ZREM', queue, id)
  redis.call('ZREM', waiters, id)
  if head == id then
    wake_head(queue, channel)
  end
end
