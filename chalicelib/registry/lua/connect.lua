-- KEYS: registry, the connection's hash, then one key per channel joined at connect.
-- ARGV: id, value, max age (s), stale cutoff (s), prune sample, expire-at (s), enforce (1/0),
--       subscribe patterns, publish patterns, max channels, the token's sub ('' for none: kept in the
--       connection's hash and in each membership, for presence), then the channel names.
-- Returns {0}, or a refusal as the message script's, {3, 0, 1, channel} (not allowed) or {4, 0, 1, ''}
-- (too many): nothing written then.
-- uses: allowed
local first_channel = 12
local enforce = ARGV[7] == '1'
if #ARGV - first_channel + 1 > tonumber(ARGV[10]) then return {4, 0, 1, ''} end
local user = ARGV[11]
if enforce then
  for i = first_channel, #ARGV do
    if not allowed(ARGV[8], ARGV[i]) then return {3, 0, 1, ARGV[i]} end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local sample = redis.call('HRANDFIELD', KEYS[1], ARGV[5], 'WITHVALUES')
for i = 1, #sample, 2 do
  if (tonumber(string.match(sample[i + 1], '^%d+')) or 0) <= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], sample[i])
  end
end
if enforce then redis.call('HSET', KEYS[2], '#s', ARGV[8], '#p', ARGV[9]) end
if user ~= '' then redis.call('HSET', KEYS[2], '#u', user) end
-- a membership keeps no principal digest, only the sub (for presence)
local member = string.match(ARGV[2], '^%d+') .. (user ~= '' and ':' .. user or '')
for i = first_channel, #ARGV do
  local channel_key = KEYS[3 + i - first_channel]
  redis.call('HSET', channel_key, ARGV[1], member)
  redis.call('EXPIRE', channel_key, ARGV[3])
  redis.call('HSET', KEYS[2], 'c:' .. ARGV[i], 1)
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIREAT', KEYS[2], ARGV[6]) end
return {0}
