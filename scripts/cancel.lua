-- cancel.lua: give back a reservation made by reserve.lua, if that can never
-- let the bucket grant more than it should.
--
-- Only the LATEST reservation is returned (the bucket's TAT still equals the
-- TAT it set). Then the bucket goes back to exactly the state it would be in
-- had the reservation never been made, so no later grant moves. An earlier
-- reservation is never returned: later ones were scheduled behind it, and
-- pulling TAT back would let a new caller share their slots (the bug class of
-- golang/go#56924). Such a token is simply lost, never double-spent.
--
-- KEYS[1]  bucket
-- KEYS[2]  clock
-- KEYS[3]  grants: the semaphore's grant counter, whose TTL the clock renews
-- ARGV[1]  interval: microseconds per token
-- ARGV[2]  n: tokens of the reservation
-- ARGV[3]  tat: the TAT that reserve.lua returned for it
--
-- Returns 1 if the tokens were given back, 0 if not.
local interval, n, tat = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if cur ~= tat then
  return 0
end
local now = clock(KEYS[2], KEYS[3])
local back = tat - n * interval
if back <= now then
  redis.call('DEL', KEYS[1])
else
  gcra_store(KEYS[1], now, back)
end
return 1
