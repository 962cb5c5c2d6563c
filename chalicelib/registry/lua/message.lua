-- KEYS and ARGV: named locals, from chalicelib/registry/scripts.py's MessageKeys and MessageArgs.
-- Modes: publish, check (a sharded publish's sender checks: rates and channel, no budget, no read),
-- ping, subscribe, unsubscribe, resume, presence, refuse (a message the caller refused: it costs a token,
-- nothing else).
-- Returns {0, lost, suffix, {entries...}} for a publish (suffix: what history added to the payload, '' with
-- history off), {5, lost, cost, suffix} for one whose audience is larger than the inline max (queued:
-- admitted against the queue's budget, nothing read), {0, lost, recovered, latest, epoch, replay...} for a
-- subscribe or resume with history (as ``recover``), {0, lost, entries...} for presence, {0, lost}
-- otherwise. Refusals:
-- {kind, wait ms, first, detail}: 1 over a rate (the sender's or its user's), 2 over the post budget (or
-- the queue's), 3 channel not allowed (detail: the channel), 4 too many channels, 7 refused by the caller;
-- ``first``: always 1 for 3, 4 and 7 (answered, as a granted message is), and for 1 and 2 only for the
-- first limit refusal since the sender's last answered message. {6}: the sender's $disconnect has run
-- (nothing written).
-- uses: allowed, buckets, streams
if sender ~= '' and redis.call('HEXISTS', own_hash, '#gone') == 1 then return {6} end
local now = now_ms(test_now)
local lost = 0
if sender ~= '' and redis.call('HSETNX', registry, sender, value) == 1 then
  redis.call('EXPIRE', registry, max_age)
  lost = 1
end
local publishing = mode == 'publish' or mode == 'check'
-- A reply (pong, acknowledgement, error) is a post: one from the budget, never refused.
local function pay_reply()
  if sender ~= '' and budget > 0 and pays_replies then
    spend(posts_key, level(posts_key, budget, budget, now), 1, budget, budget, now)
  end
end
local function first_refusal()
  if sender == '' then return 1 end
  local first = redis.call('HSETNX', sender_bucket, 'told', 1)
  if redis.call('PTTL', sender_bucket) < 0 then redis.call('PEXPIRE', sender_bucket, 60000) end
  if first == 1 then pay_reply() end
  return first
end
local sender_tokens
if sender ~= '' and rate > 0 then
  sender_tokens = level(sender_bucket, rate, burst, now)
  if sender_tokens < 1 then return {1, wait_for(sender_tokens, 1, rate), first_refusal(), ''} end
end
-- Every message the sender sends takes a token, granted or refused. A refusal within the sender's rate
-- is answered, as a granted message is; one for a limit only when it is the first in a row. ``wait``: a
-- function, called once the refusal's reply is paid (it may be paid from the bucket that refused).
local function refuse(kind, detail, wait)
  if sender_tokens then spend(sender_bucket, sender_tokens, 1, rate, burst, now) end
  local first = 1
  if kind == 1 or kind == 2 then
    first = first_refusal()
  else
    if sender ~= '' then redis.call('HDEL', sender_bucket, 'told') end
    pay_reply()
  end
  return {kind, wait and wait() or 0, first, detail}
end
if mode == 'refuse' then return refuse(7, '') end
if publishing and channel ~= '' and sender ~= '' and enforce
    and not allowed(redis.call('HGET', own_hash, '#p'), channel) then
  return refuse(3, channel)
end
if (mode == 'subscribe' or mode == 'presence') and enforce
    and not allowed(redis.call('HGET', own_hash, '#s'), channel) then
  return refuse(3, channel)
end
if mode == 'subscribe' and redis.call('HEXISTS', own_hash, 'c:' .. channel) == 0 then
  local joined = redis.call('HLEN', own_hash)
  for _, field in ipairs({'#s', '#p', '#u'}) do joined = joined - redis.call('HEXISTS', own_hash, field) end
  if joined >= max_channels then return refuse(4, '') end
end
local user_key, user_tokens
if publishing and sender ~= '' and user_rate > 0 then
  local principal = string.match(redis.call('HGET', registry, sender) or '', '^%d+:(.+)$')
  if principal then
    user_key = user_prefix .. principal
    user_tokens = level(user_key, user_rate, burst, now)
    if user_tokens < 1 then
      return refuse(1, '', function() return wait_for(user_tokens, 1, user_rate) end)
    end
  end
end
local queued = false
local posts_tokens, queue_tokens, cost
if mode == 'publish' and (budget > 0 or inline_max > 0) then
  cost = redis.call('HLEN', audience)
  if not echo and sender ~= '' and redis.call('HEXISTS', audience, sender) == 1 then cost = cost - 1 end
  if inline_max > 0 and cost > inline_max then
    queued = true
    if budget > 0 then
      queue_tokens = level(queue_key, budget, backlog, now)
      local need = math.min(cost, backlog)
      if queue_tokens < need then
        return refuse(2, '', function() return wait_for(queue_tokens, need, budget) end)
      end
    end
  elseif budget > 0 then
    posts_tokens = level(posts_key, budget, budget, now)
    local need = math.min(cost, math.max(reserve, 1))
    if posts_tokens < need then
      return refuse(2, '', function() return wait_for(level(posts_key, budget, budget, now), need, budget) end)
    end
  end
end
if sender ~= '' then redis.call('HDEL', sender_bucket, 'told') end
if sender_tokens then spend(sender_bucket, sender_tokens, 1, rate, burst, now) end
if user_key then spend(user_key, user_tokens, 1, user_rate, burst, now) end
if posts_tokens then spend(posts_key, posts_tokens, cost, budget, budget, now) end
if queue_tokens then spend(queue_key, queue_tokens, cost, budget, backlog, now) end
if mode == 'subscribe' then
  local user = redis.call('HGET', own_hash, '#u')
  redis.call('HSET', audience, sender, user and value .. ':' .. user or value)
  redis.call('EXPIRE', audience, max_age)
  redis.call('HSET', own_hash, 'c:' .. channel, 1)
  redis.call('EXPIREAT', own_hash, expire_at)
elseif mode == 'unsubscribe' then
  redis.call('HDEL', audience, sender)
  redis.call('HDEL', own_hash, 'c:' .. channel)
end
if not publishing then pay_reply() end
if mode == 'presence' then
  local reply = redis.call('HGETALL', audience)
  table.insert(reply, 1, lost)
  table.insert(reply, 1, 0)
  return reply
end
if (mode == 'subscribe' or mode == 'resume') and history_size > 0 then
  local reply = recover(history_key, position_key, since_offset, since_epoch, position_ttl)
  -- a replay is posts, one a message: paid like replies
  if #reply > 3 and budget > 0 and pays_replies then
    spend(posts_key, level(posts_key, budget, budget, now), #reply - 3, budget, budget, now)
  end
  table.insert(reply, 1, lost)
  table.insert(reply, 1, 0)
  return reply
end
if mode ~= 'publish' then return {0, lost} end
local suffix = ''
if history_size > 0 then suffix = append(appended_key, history_key, position_key, payload, history_size, history_ttl, position_ttl) end
if queued then return {5, lost, cost, suffix} end
-- the audience as a nested array: prepending to it would move every entry, three times
return {0, lost, suffix, redis.call('HGETALL', audience)}
