-- A stream: the history of a channel, or of the messages to everyone. Its position hash holds the latest
-- offset ('o') and its epoch ('e'); its history list holds the last messages as they were delivered,
-- newest first. A position made anew (none yet, or lost with Redis's data) gets a new epoch and empties
-- the history kept under the old one: a stream rebuilt is never taken for the old one.
local function position(history_key, position_key, position_ttl)
  local state = redis.call('HMGET', position_key, 'o', 'e')
  local offset, epoch = tonumber(state[1]) or 0, state[2]
  if not epoch then
    local time = redis.call('TIME')
    epoch = time[1] .. string.format('%06d', tonumber(time[2]))
    offset = 0
    redis.call('HSET', position_key, 'o', 0, 'e', epoch)
    redis.call('DEL', history_key)
  end
  redis.call('EXPIRE', position_key, position_ttl)
  return offset, epoch
end
-- How long a publish's mark outlives it: far past the client's retries of one script (three attempts
-- within 7 s), which are what it is for.
local APPENDED_MARK_SECONDS = 60
-- Give a publication (a JSON object's bytes) its offset and epoch, keep it, and return what was added
-- before its closing brace: every copy of it, delivered or replayed, is these same bytes. Once per
-- publish: a script run again because its answer was lost (the client retries it) finds the mark its
-- first run left under ``appended_key`` and returns the same suffix, so no message is kept twice.
local function append(appended_key, history_key, position_key, payload, size, ttl, position_ttl)
  local kept = redis.call('GET', appended_key)
  if kept then return kept end
  local _, epoch = position(history_key, position_key, position_ttl)
  local offset = redis.call('HINCRBY', position_key, 'o', 1)
  local suffix = ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
  if redis.call('LPUSH', history_key, string.sub(payload, 1, -2) .. suffix) > size then
    redis.call('LTRIM', history_key, 0, size - 1)
  end
  redis.call('EXPIRE', history_key, ttl)
  redis.call('SET', appended_key, suffix, 'EX', APPENDED_MARK_SECONDS)
  return suffix
end
-- For a client that had seen ``since`` (offset, epoch; offset -1: it asks for none): recovered (1, 0, or
-- -1 when not asked), the latest offset, the epoch, then every message after ``since``, oldest first, or
-- none: all of them or nothing, never a partial recovery.
local function recover(history_key, position_key, since_offset, since_epoch, position_ttl)
  local latest, epoch = position(history_key, position_key, position_ttl)
  local reply = {-1, latest, epoch}
  if since_offset < 0 then return reply end
  reply[1] = 0
  if since_epoch ~= epoch or since_offset > latest then return reply end
  local missed = latest - since_offset
  if missed > redis.call('LLEN', history_key) then return reply end
  reply[1] = 1
  local newest_first = missed > 0 and redis.call('LRANGE', history_key, 0, missed - 1) or {}
  for i = #newest_first, 1, -1 do table.insert(reply, newest_first[i]) end
  return reply
end
