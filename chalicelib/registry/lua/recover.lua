-- KEYS: a stream's history and position, the post budget. ARGV: position TTL (s), the since offset and
-- epoch, posts/s, a test's clock (ms; -1: the server's). With shards, a stream lives in the unsharded slot
-- ``{PREFIX}`` beside the post budget: a sharded subscribe or resume recovers with this script, one round
-- trip after the sender's own.
-- uses: buckets, streams
local reply = recover(KEYS[1], KEYS[2], tonumber(ARGV[2]), ARGV[3], ARGV[1])
local budget = tonumber(ARGV[4])
if #reply > 3 and budget > 0 then
  local now = now_ms(ARGV[5])
  spend(KEYS[3], level(KEYS[3], budget, budget, now), #reply - 3, budget, budget, now)
end
return reply
