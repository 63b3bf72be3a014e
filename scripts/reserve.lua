-- reserve.lua: reserve n tokens of a cluster-wide token bucket (GCRA).
--
-- KEYS[1]  bucket: string, the TAT in microseconds (TTL: until the bucket is full again)
-- KEYS[2]  clock: the latest Redis time a script used (see common.lua)
-- KEYS[3]  grants: the semaphore's grant counter, whose TTL the clock renews
-- ARGV[1]  interval: microseconds per token (period / rate, rounded up)
-- ARGV[2]  burst: bucket size
-- ARGV[3]  n: tokens to take (1 <= n <= burst)
-- ARGV[4]  max_wait: microseconds the caller can wait; -1 = no limit
--
-- Returns {ok, wait, tat}
--   ok    1 = reserved: the caller may act in `wait` microseconds;
--         0 = the earliest slot is `wait` microseconds away, more than
--             max_wait: nothing was consumed.
--   tat   the bucket's TAT after this reservation (identifies it for cancel.lua)
local interval, burst, n, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = clock(KEYS[2], KEYS[3])
local new_tat, allow_at = gcra(KEYS[1], now, interval, burst, n)
local wait = math.max(0, allow_at - now)
if max_wait >= 0 and wait > max_wait then
  return {0, wait, 0}
end
gcra_store(KEYS[1], now, new_tat)
return {1, wait, new_tat}
