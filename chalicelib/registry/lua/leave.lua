-- KEYS: registry, the connection's hash. ARGV: id, the channel keys' prefix, the tombstone's life (s).
-- The channel keys are read from the connection's hash: they share its hash tag, hence its slot. The
-- hash is left as a tombstone ("#gone"), so a message still in flight across $disconnect finds the
-- connection closed instead of registering it again.
redis.call('HDEL', KEYS[1], ARGV[1])
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, 2) == 'c:' then
    redis.call('HDEL', ARGV[2] .. string.sub(field, 3), ARGV[1])
  end
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], '#gone', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
