-- A token bucket's level now: full when it has no state (new, or expired once full again). Every bucket
-- runs on the server's clock (TIME): containers' clocks differ, and a bucket settled by one container
-- and read by another must never refill by their difference.
-- ``fixed``: a test's clock (ms), or negative for the server's.
local function now_ms(fixed)
  if tonumber(fixed) >= 0 then return tonumber(fixed) end
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function level(key, rate, capacity, now)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or at == nil then return capacity end
  return math.min(capacity, tokens + math.max(0, now - at) * rate / 1000)
end
-- Take ``cost`` (perhaps into debt); the state expires once the bucket would be full again.
local function spend(key, tokens, cost, rate, capacity, now)
  redis.call('HSET', key, 'tokens', tokens - cost, 'at', now)
  redis.call('PEXPIRE', key, math.ceil((capacity - tokens + cost) * 1000 / rate) + 1000)
end
-- Milliseconds until the bucket holds ``need``.
local function wait_for(tokens, need, rate)
  return math.ceil((need - tokens) * 1000 / rate)
end
