"""The connection registry: the only module that knows how connections are kept in Redis.

Data model, with one shard (the default) all keys under one cluster hash tag ``{PREFIX}`` (one slot,
so one script sees them all):

    {PREFIX}:connections   hash: connection id -> "connectedAt" or "connectedAt:principal key"
    {PREFIX}:ch:<channel>  hash: member connection id -> "connectedAt" or "connectedAt:sub" (one per channel)
    {PREFIX}:conn:<id>     hash: "c:<channel>" -> 1 for each channel joined, the token's channel patterns
                           ("#s" subscribe, "#p" publish) and sub ("#u"); expires with the connection.
                           After $disconnect: a tombstone ("#gone") for 60 s
    {PREFIX}:rate:<id>     hash: the sender's token bucket (tokens, at); expires once full again
    {PREFIX}:user:<key>    hash: a user's bucket (PUBLISH_RATE_PER_USER)
    {PREFIX}:posts         hash: the whole API's post budget (tokens, at)
    {PREFIX}:queued        hash: the queue's budget (queued broadcasts admitted, not yet delivered)
    {PREFIX}:history[:<c>] list: a stream's last messages as delivered, newest first (with history)
    {PREFIX}:position[:<c>] hash: a stream's latest offset and its epoch

Every event is a single round trip (one script, or one command):

    connect      EVALSHA connect   (HSET + EXPIRE + prune a random sample of stale fields; the
                                    permissions; the ?channels= memberships)
    disconnect   EVALSHA leave     (HDEL from the registry and from every channel joined; the tombstone)
    publish      EVALSHA message   (the tombstone, re-assert the sender, take from its buckets and from
                                    the post budget, the stream's offset and history, HGETALL of the
                                    audience; or refuse and read nothing)
    ping, subscribe (and its recovery), unsubscribe, resume, presence   EVALSHA message (another mode)
    afterwards   HDEL of the gone and stale ids, only when there are any

With one shard, all keys share one slot, so a publish's limits, history and audience are decided in one
script. An audience larger than the inline max (queued fan-out) is counted, not read: the script admits
it against the queue's budget and answers ``Queued``; the queue's workers read it, a shard at a time
(``read_shard``), leasing their posts from the budget beyond the inline reserve (``lease_posts``).

With ``shards`` > 1 (``REGISTRY_SHARDS``), a connection id's CRC-32 picks its shard ``k``, and every key
about it (its entry, its channel memberships, its hash, its rates) has the tag ``{PREFIX:k}``: one slot
per shard, so connect, disconnect, ping, subscribe and unsubscribe are still one script. The budgets and
the streams stay in ``{PREFIX}``. A publish is then two round trips, each of two requests side by side:
the sender's checks (the message script, mode ``check``) with the audience's size (HLEN of each shard's
key, one pipeline); then the admission (the budget script: the budget, the stream's append) with the
read (HGETALL of each shard with members, one pipeline). A sharded recovery runs the recover script
after the subscribe's.

``$disconnect`` is best effort, so an entry can outlive its connection. API Gateway closes every
connection at 2 hours (``max_age_seconds``), so an entry (in the registry or in a channel) at least
that old is never a recipient; it is removed by the next publish to it, by the random sampling on
connect, and with the whole key when nothing has joined it for ``max_age_seconds``.

The principal key is an 8-byte BLAKE2b digest of the token's ``sub`` (11 characters): a Cognito
``sub`` is a 36-character UUID, which would make an entry 1.7 times a bare set's; the digest keeps it
at 1.3 and still names the user for anything that acts per user (compute it from a ``sub``). The raw
``sub`` is kept only where presence needs it: the connection's hash and its memberships.

Redis can lose its data (a cache node replaced without a replica, a failover that drops the last
writes). Every message and ping a connection sends re-registers it if it is missing (HSETNX: an
existing entry, and its principal, are left alone) and says so (``lost``), so a live connection is
back in the registry within one keepalive period; its channels and permissions are gone with the
data, which is why the reply tells the client to reconnect. Its streams get a new epoch.

Every bucket runs on Redis's clock (TIME in the script). The buckets grant when they hold the cost or
their threshold (a connection's: 1 token; the budget's: the inline reserve; the queue's: its backlog),
whichever is less, and then take the whole cost: a publish larger than the threshold still goes out,
and leaves a debt that later publishes wait for, so the average stays at the rate.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from chalicelib.auth import Permissions
from chalicelib.redis_auth import credential_provider
from chalicelib.settings import FANOUT_QUEUE_BACKLOG_SECONDS_DEFAULT, Settings

# API Gateway ids are 16 characters of base64 ("ZJ8cWdV9iYcCIkg="); allow any plain token.
_CONNECTION_ID = re.compile(r"^[A-Za-z0-9+/=_-]{1,128}$")
# Fields examined for staleness on every connect: enough to keep stale entries a minority.
_PRUNE_SAMPLE_SIZE = 3
# Redis connections one container may hold; more concurrent callers wait (up to the socket timeout)
# instead of failing. Lambda runs one invocation per container; the local gateway runs many at once.
_POOL_SIZE = 64

# Channel patterns: a name, or a prefix ending in '*'; a list of them is one string, newline-separated.
_ALLOWED_LUA = """
local function allowed(patterns, name)
  for p in string.gmatch(patterns or '', '[^\\n]+') do
    if p == name or (string.sub(p, -1) == '*' and string.sub(name, 1, #p - 1) == string.sub(p, 1, -2)) then
      return true
    end
  end
  return false
end
"""

# A token bucket's level now: full when it has no state (new, or expired once full again). Every bucket
# runs on the server's clock (TIME): containers' clocks differ, and a bucket settled by one container
# and read by another must never refill by their difference.
_LEVEL_LUA = """
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
"""

# A stream: the history of a channel, or of the messages to everyone. Its position hash holds the latest
# offset ('o') and its epoch ('e'); its history list holds the last messages as they were delivered,
# newest first. A position made anew (none yet, or lost with Redis's data) gets a new epoch and empties
# the history kept under the old one: a stream rebuilt is never taken for the old one.
_STREAM_LUA = """
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
-- Give a publication (a JSON object's bytes) its offset and epoch, keep it, and return what was added
-- before its closing brace: every copy of it, delivered or replayed, is these same bytes.
local function append(history_key, position_key, payload, size, ttl, position_ttl)
  local _, epoch = position(history_key, position_key, position_ttl)
  local offset = redis.call('HINCRBY', position_key, 'o', 1)
  local suffix = ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
  if redis.call('LPUSH', history_key, string.sub(payload, 1, -2) .. suffix) > size then
    redis.call('LTRIM', history_key, 0, size - 1)
  end
  redis.call('EXPIRE', history_key, ttl)
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
"""

# KEYS: registry, the connection's hash, then one key per channel joined at connect.
# ARGV: id, value, max age (s), stale cutoff (s), prune sample, expire-at (s), enforce (1/0),
#       subscribe patterns, publish patterns, max channels, the token's sub ('' for none: kept in the
#       connection's hash and in each membership, for presence), then the channel names.
# Returns {0}, or a refusal as the message script's, {3, 0, 1, channel} (not allowed) or {4, 0, 1, ''}
# (too many): nothing written then.
_CONNECT_SCRIPT = (
    _ALLOWED_LUA
    + """
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
"""
)

# KEYS: registry, the connection's hash. ARGV: id, the channel keys' prefix, the tombstone's life (s).
# The channel keys are read from the connection's hash: they share its hash tag, hence its slot. The
# hash is left as a tombstone ("#gone"), so a message still in flight across $disconnect finds the
# connection closed instead of registering it again.
_LEAVE_SCRIPT = """
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
"""

# KEYS: 1 registry, 2 sender's bucket, 3 post budget, 4 sender's hash, 5 the audience (registry or
#       channel), 6 the queue's budget, 7 and 8 the stream's history and position (the audience's, or
#       everyone's for resume). 3, 6, 7 and 8 are only used with one shard: sharded, they are keys of the
#       sender's slot that are never written (history then lives in the stream script's slot).
# ARGV: see ``ConnectionRegistry._run_message``.
# Modes: publish, check (a sharded publish's sender checks: rates and channel, no budget, no read),
# ping, subscribe, unsubscribe, resume, presence, refuse (a message the caller refused: it costs a token,
# nothing else).
# Returns {0, lost, suffix, entries...} for a publish (suffix: what history added to the payload, '' with
# history off), {5, lost, cost, suffix} for one whose audience is larger than the inline max (queued:
# admitted against the queue's budget, nothing read), {0, lost, recovered, latest, epoch, replay...} for a
# subscribe or resume with history (as ``recover``), {0, lost, entries...} for presence, {0, lost}
# otherwise. Refusals:
# {kind, wait ms, first, detail}: 1 over a rate (the sender's or its user's), 2 over the post budget (or
# the queue's), 3 channel not allowed (detail: the channel), 4 too many channels, 7 refused by the caller;
# ``first``: always 1 for 3, 4 and 7 (answered, as a granted message is), and for 1 and 2 only for the
# first limit refusal since the sender's last answered message. {6}: the sender's $disconnect has run
# (nothing written).
_MESSAGE_SCRIPT = (
    _ALLOWED_LUA
    + _LEVEL_LUA
    + _STREAM_LUA
    + """
local sender, mode, channel = ARGV[1], ARGV[7], ARGV[8]
if sender ~= '' and redis.call('HEXISTS', KEYS[4], '#gone') == 1 then return {6} end
local now = now_ms(ARGV[19])
local lost = 0
if sender ~= '' and redis.call('HSETNX', KEYS[1], sender, ARGV[2]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  lost = 1
end
local rate, burst, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local enforce, publishing = ARGV[10] == '1', mode == 'publish' or mode == 'check'
local user_rate, backlog, reserve = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local history_size, history_ttl, position_ttl = tonumber(ARGV[20]), ARGV[21], ARGV[22]
-- A reply (pong, acknowledgement, error) is a post: one from the budget, never refused.
local function pay_reply()
  if sender ~= '' and budget > 0 and ARGV[17] == '1' then
    spend(KEYS[3], level(KEYS[3], budget, budget, now), 1, budget, budget, now)
  end
end
local function first_refusal()
  if sender == '' then return 1 end
  local first = redis.call('HSETNX', KEYS[2], 'told', 1)
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], 60000) end
  if first == 1 then pay_reply() end
  return first
end
local sender_tokens
if sender ~= '' and rate > 0 then
  sender_tokens = level(KEYS[2], rate, burst, now)
  if sender_tokens < 1 then return {1, wait_for(sender_tokens, 1, rate), first_refusal(), ''} end
end
-- Every message the sender sends takes a token, granted or refused. A refusal within the sender's rate
-- is answered, as a granted message is; one for a limit only when it is the first in a row. ``wait``: a
-- function, called once the refusal's reply is paid (it may be paid from the bucket that refused).
local function refuse(kind, detail, wait)
  if sender_tokens then spend(KEYS[2], sender_tokens, 1, rate, burst, now) end
  local first = 1
  if kind == 1 or kind == 2 then
    first = first_refusal()
  else
    if sender ~= '' then redis.call('HDEL', KEYS[2], 'told') end
    pay_reply()
  end
  return {kind, wait and wait() or 0, first, detail}
end
if mode == 'refuse' then return refuse(7, '') end
if publishing and channel ~= '' and sender ~= '' and enforce
    and not allowed(redis.call('HGET', KEYS[4], '#p'), channel) then
  return refuse(3, channel)
end
if (mode == 'subscribe' or mode == 'presence') and enforce
    and not allowed(redis.call('HGET', KEYS[4], '#s'), channel) then
  return refuse(3, channel)
end
if mode == 'subscribe' and redis.call('HEXISTS', KEYS[4], 'c:' .. channel) == 0 then
  local joined = redis.call('HLEN', KEYS[4])
  for _, field in ipairs({'#s', '#p', '#u'}) do joined = joined - redis.call('HEXISTS', KEYS[4], field) end
  if joined >= tonumber(ARGV[11]) then return refuse(4, '') end
end
local user_key, user_tokens
if publishing and sender ~= '' and user_rate > 0 then
  local principal = string.match(redis.call('HGET', KEYS[1], sender) or '', '^%d+:(.+)$')
  if principal then
    user_key = ARGV[18] .. principal
    user_tokens = level(user_key, user_rate, burst, now)
    if user_tokens < 1 then
      return refuse(1, '', function() return wait_for(user_tokens, 1, user_rate) end)
    end
  end
end
local inline_max, queued = tonumber(ARGV[13]), false
local posts_tokens, queue_tokens, cost
if mode == 'publish' and (budget > 0 or inline_max > 0) then
  cost = redis.call('HLEN', KEYS[5])
  if ARGV[9] ~= '1' and sender ~= '' and redis.call('HEXISTS', KEYS[5], sender) == 1 then cost = cost - 1 end
  if inline_max > 0 and cost > inline_max then
    queued = true
    if budget > 0 then
      queue_tokens = level(KEYS[6], budget, backlog, now)
      local need = math.min(cost, backlog)
      if queue_tokens < need then
        return refuse(2, '', function() return wait_for(queue_tokens, need, budget) end)
      end
    end
  elseif budget > 0 then
    posts_tokens = level(KEYS[3], budget, budget, now)
    local need = math.min(cost, math.max(reserve, 1))
    if posts_tokens < need then
      return refuse(2, '', function() return wait_for(level(KEYS[3], budget, budget, now), need, budget) end)
    end
  end
end
if sender ~= '' then redis.call('HDEL', KEYS[2], 'told') end
if sender_tokens then spend(KEYS[2], sender_tokens, 1, rate, burst, now) end
if user_key then spend(user_key, user_tokens, 1, user_rate, burst, now) end
if posts_tokens then spend(KEYS[3], posts_tokens, cost, budget, budget, now) end
if queue_tokens then spend(KEYS[6], queue_tokens, cost, budget, backlog, now) end
if mode == 'subscribe' then
  local user = redis.call('HGET', KEYS[4], '#u')
  redis.call('HSET', KEYS[5], sender, user and ARGV[2] .. ':' .. user or ARGV[2])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
  redis.call('HSET', KEYS[4], 'c:' .. channel, 1)
  redis.call('EXPIREAT', KEYS[4], ARGV[12])
elseif mode == 'unsubscribe' then
  redis.call('HDEL', KEYS[5], sender)
  redis.call('HDEL', KEYS[4], 'c:' .. channel)
end
if not publishing then pay_reply() end
if mode == 'presence' then
  local reply = redis.call('HGETALL', KEYS[5])
  table.insert(reply, 1, lost)
  table.insert(reply, 1, 0)
  return reply
end
if (mode == 'subscribe' or mode == 'resume') and history_size > 0 then
  local reply = recover(KEYS[7], KEYS[8], tonumber(ARGV[24]), ARGV[25], position_ttl)
  -- a replay is posts, one a message: paid like replies
  if #reply > 3 and budget > 0 and ARGV[17] == '1' then
    spend(KEYS[3], level(KEYS[3], budget, budget, now), #reply - 3, budget, budget, now)
  end
  table.insert(reply, 1, lost)
  table.insert(reply, 1, 0)
  return reply
end
if mode ~= 'publish' then return {0, lost} end
local suffix = ''
if history_size > 0 then suffix = append(KEYS[7], KEYS[8], ARGV[23], history_size, history_ttl, position_ttl) end
if queued then return {5, lost, cost, suffix} end
local reply = redis.call('HGETALL', KEYS[5])
table.insert(reply, 1, suffix)
table.insert(reply, 1, lost)
table.insert(reply, 1, 0)
return reply
"""
)


# KEYS: the post budget, the queue's budget, the stream's history and position. ARGV: posts/s, count,
# mode, inline reserve, queue backlog, a test's clock (ms; -1: the server's), history size, history TTL
# (s), position TTL (s), the payload. A sharded publish's admission: the budget (none when off), then
# the stream's append, in the unsharded slot; take and queue return {0, count, 0, suffix}.
# take (a sharded inline publish): all of ``count`` once the bucket holds min(count, reserve or 1), perhaps
# leaving a debt; else {2, wait ms, 1}. queue (a sharded queued publish): the same against the queue's
# budget, which holds up to ``backlog`` posts. lease (a worker's chunk): min(count, what the bucket holds
# beyond the reserve), never a debt; else {0, 0, wait ms until it does} (a whole chunk at once: one round
# trip per chunk, not one per token as the bucket refills).
_BUDGET_SCRIPT = (
    _LEVEL_LUA
    + _STREAM_LUA
    + """
local now, budget, count, mode = now_ms(ARGV[6]), tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local reserve, backlog = tonumber(ARGV[4]), tonumber(ARGV[5])
if mode == 'lease' then
  local tokens = level(KEYS[1], budget, budget, now)
  local granted = math.min(count, budget - reserve)
  if tokens - reserve < granted then return {0, 0, wait_for(tokens, granted + reserve, budget)} end
  spend(KEYS[1], tokens, granted, budget, budget, now)
  return {0, granted, 0}
end
if budget > 0 then
  local key, capacity, need = KEYS[1], budget, math.min(count, math.max(reserve, 1))
  if mode == 'queue' then key, capacity, need = KEYS[2], backlog, math.min(count, backlog) end
  local tokens = level(key, budget, capacity, now)
  if tokens < need then return {2, wait_for(tokens, need, budget), 1} end
  spend(key, tokens, count, budget, capacity, now)
end
local suffix = ''
if tonumber(ARGV[7]) > 0 then suffix = append(KEYS[3], KEYS[4], ARGV[10], tonumber(ARGV[7]), ARGV[8], ARGV[9]) end
return {0, count, 0, suffix}
"""
)


# KEYS: a stream's history and position, the post budget. ARGV: position TTL (s), the since offset and
# epoch, posts/s, a test's clock (ms; -1: the server's). With shards, a stream lives in the unsharded slot
# ``{PREFIX}`` beside the post budget: a sharded subscribe or resume recovers with this script, one round
# trip after the sender's own.
_RECOVER_SCRIPT = (
    _LEVEL_LUA
    + _STREAM_LUA
    + """
local reply = recover(KEYS[1], KEYS[2], tonumber(ARGV[2]), ARGV[3], ARGV[1])
local budget = tonumber(ARGV[4])
if #reply > 3 and budget > 0 then
  local now = now_ms(ARGV[5])
  spend(KEYS[3], level(KEYS[3], budget, budget, now), #reply - 3, budget, budget, now)
end
return reply
"""
)


class RegistryUnavailable(Exception):
    """Redis could not be reached or answered with an error; the registry is unchanged."""


class InvalidConnectionId(ValueError):
    """A connection id that API Gateway would never issue; refused before it reaches Redis."""


class Refusal(Exception):
    """A message the registry refused; nothing was read or written but the sender's token.

    ``first``: whether to answer it. A refusal within the sender's rate always is; a refusal for a limit
    only when it is the first since the sender's last answered message, so a flood is not a flood of
    error replies (each reply is a post).
    """

    def __init__(self, text: str, *, first: bool = True) -> None:
        super().__init__(text)
        self.first = first


class OverLimit(Refusal):
    """A publish refused by a limit. ``retry_after`` is in seconds."""

    def __init__(self, retry_after: float, *, first: bool = True) -> None:
        super().__init__(f"retry after {retry_after:.3f} s", first=first)
        self.retry_after = retry_after


class RateLimited(OverLimit):
    """The sender is over ``PUBLISH_RATE_PER_SECOND`` / ``PUBLISH_BURST``, or its user over
    ``PUBLISH_RATE_PER_USER``."""


class OverCapacity(OverLimit):
    """The whole API's post budget (``MAX_POSTS_PER_SECOND``), or the queue's backlog, cannot cover this
    publish now."""


class ChannelRefused(Refusal):
    """A subscribe or a channel publish refused."""


class ChannelForbidden(ChannelRefused):
    """The connection's token does not allow this channel."""

    def __init__(self, channel: str, *, first: bool = True) -> None:
        super().__init__(f"not allowed: {channel}", first=first)
        self.channel = channel


class TooManyChannels(ChannelRefused):
    """The connection is already in ``CHANNELS_PER_CONNECTION`` channels."""


class _CallerRefusal(Refusal):
    """The message script's answer to mode ``refuse``: the token is taken; ``first`` says whether to answer."""


class ConnectionClosed(Exception):
    """The sender's ``$disconnect`` has run: its message arrived late and is dropped, nothing written."""


# The scripts' answers (the first element of their reply).
_GRANTED, _OVER_RATE, _OVER_BUDGET, _FORBIDDEN, _TOO_MANY, _QUEUED, _CLOSED, _REFUSED = range(8)
_OVER_LIMITS = {_OVER_RATE: RateLimited, _OVER_BUDGET: OverCapacity}
# Inline publishes keep this much of a second's post budget (whole posts): the queue's workers lease only
# beyond it, and an inline publish goes out once the budget holds its cost or the reserve, whichever is
# less (at least one post), perhaps leaving a debt that later publishes and the workers wait for.
INLINE_RESERVE_SECONDS = 0.25
# A 410 for a connection younger than this does not remove it, and a reply to it is tried again: API
# Gateway may answer 410 while the connection's handshake is finishing, just after $connect returned.
HANDSHAKE_WINDOW_SECONDS = 5
# A stream's position outlives its history: a client holding an offset across a quiet spell learns
# ``recovered: true`` with nothing missed, rather than a new epoch.
_POSITION_TTL_SECONDS = 24 * 3600
# How long $disconnect's tombstone keeps a late message from registering its connection again: a message
# API Gateway received before the close reaches its handler within the 29 s integration timeout.
_TOMBSTONE_SECONDS = 60


@dataclass(frozen=True)
class History:
    """How much of each stream is kept: ``size`` messages (0: no history, no offsets), the whole stream
    expiring ``ttl_seconds`` after its last publish; and how many users a presence answer lists."""

    size: int = 0
    ttl_seconds: int = 600
    presence_max: int = 100


@dataclass(frozen=True)
class Limits:
    """Per-connection and per-user token buckets, the whole API's post budget, and how far ahead of it
    the queue may admit broadcasts; a rate or budget of 0 switches it off."""

    publish_rate_per_second: float = 0
    publish_burst: int = 1
    max_posts_per_second: int = 0
    publish_rate_per_user: float = 0
    queue_backlog_seconds: float = FANOUT_QUEUE_BACKLOG_SECONDS_DEFAULT

    @property
    def inline_reserve(self) -> int:
        return int(self.max_posts_per_second * INLINE_RESERVE_SECONDS)

    @property
    def queue_backlog(self) -> float:
        """Posts the queue may hold admitted but not yet delivered (its budget's capacity)."""
        return self.max_posts_per_second * self.queue_backlog_seconds


_LEASES_PER_SECOND = 20  # see ``ConnectionRegistry.post_lease_chunk``


@dataclass(frozen=True)
class Queued:
    """A publish too large to deliver inline: nothing was read, and it was admitted against the queue's
    budget.

    ``sizes``: the audience's entries in each shard that has any (one job each); ``lost`` and ``suffix``
    as in ``Snapshot``. The workers read their shard and take the post budget as they post.
    """

    sizes: dict[int, int]
    lost: bool = False
    suffix: str = ""

    @property
    def recipients(self) -> int:
        return sum(self.sizes.values())


@dataclass(frozen=True)
class Snapshot:
    """The audience as one publish sees it; ``lost``: Redis had lost the sender (it is back now).

    ``young``: the live members that connected less than ``HANDSHAKE_WINDOW_SECONDS`` ago: a 410 from
    one of them may be API Gateway's handshake still finishing, not a closed connection. ``suffix``:
    what history added to the payload before its closing brace (its offset and epoch; '' without
    history): every recipient gets ``envelope.positioned(payload, suffix)``.
    """

    live: list[str]
    stale: list[str]
    lost: bool = False
    young: frozenset[str] = frozenset()
    suffix: str = ""


@dataclass(frozen=True)
class Recovery:
    """A stream as a subscribe or resume found it: its latest ``offset`` and ``epoch``; ``recovered``:
    None when no ``since`` was given, else whether every message after it is in ``replay`` (oldest
    first, each as it was delivered), all or none."""

    offset: int
    epoch: str
    recovered: bool | None
    replay: list[bytes]


@dataclass(frozen=True)
class Joined:
    """A subscribe's or resume's outcome; ``recovery`` is None with history off."""

    lost: bool
    recovery: Recovery | None = None


@dataclass(frozen=True)
class Presence:
    """A channel's live members: ``count`` connections in all, ``members`` (user: the token's sub, or
    None; connections) for at most ``presence_max`` users, most connections first."""

    count: int
    members: list[tuple[str | None, int]]
    lost: bool = False


def redis_client(settings: Settings, session: Any = None) -> redis.Redis | RedisCluster:
    """One client per container, with timeouts and retry with backoff on connection errors.

    ``session`` (boto3) signs ElastiCache IAM tokens when ``REDIS_AUTH=iam``; unused otherwise.
    """
    options = {
        "credential_provider": credential_provider(settings, session),
        "decode_responses": True,
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_socket_timeout_seconds,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
    }
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    # A blocking pool: callers beyond its size wait for a free connection (at most the socket
    # timeout) rather than fail with "Too many connections". No health_check_interval: redis-py's
    # check PINGs inside a new connection's handshake under a retry of its own, nested in the
    # connect's retry, so a stalled Redis cost 9 timeouts (18 s) instead of 3; a connection reset
    # while idle (a frozen container's, by a NAT gateway) is found at checkout and replaced anyway,
    # and the check's monotonic clock does not advance while Lambda is frozen.
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=_POOL_SIZE,
        timeout=settings.redis_socket_timeout_seconds,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **options,
    )
    return redis.Redis(connection_pool=pool)


class ConnectionRegistry:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        max_age_seconds: int,
        limits: Limits = Limits(),
        enforce_channel_permissions: bool = False,
        channels_per_connection: int = 20,
        shards: int = 1,
        inline_max: int = 0,
        history: History = History(),
        clock: Callable[[], float] = time.time,
        bucket_clock: Callable[[], float] | None = None,
    ) -> None:
        """``shards``: how many shards hold the connections (``REGISTRY_SHARDS``); ``inline_max``: the
        largest audience a publish reads itself (0: every audience, there is no queue). ``clock``: this
        container's, for connections' ages (API Gateway's ``connectedAt`` is in seconds); the token buckets
        run on Redis's clock, shared by every container, unless a test steps ``bucket_clock``. ``history``:
        how much of each stream is kept (off by default: no offsets, no replays)."""
        self._client = client
        self._prefix = prefix
        self._max_age_seconds = max_age_seconds
        self._limits = limits
        self._enforce = enforce_channel_permissions
        self._channels_per_connection = channels_per_connection
        self._shards = shards
        self._inline_max = inline_max
        self._history = history
        self._clock = clock
        self._bucket_clock = bucket_clock
        self._connect = client.register_script(_CONNECT_SCRIPT)
        self._leave = client.register_script(_LEAVE_SCRIPT)
        self._message = client.register_script(_MESSAGE_SCRIPT)
        self._budget = client.register_script(_BUDGET_SCRIPT)
        self._recover = client.register_script(_RECOVER_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings, session: Any = None) -> ConnectionRegistry:
        return cls(
            redis_client(settings, session),
            prefix=settings.redis_key_prefix,
            max_age_seconds=settings.connection_max_age_seconds,
            limits=Limits(
                publish_rate_per_second=settings.publish_rate_per_second,
                publish_burst=settings.publish_burst,
                max_posts_per_second=settings.max_posts_per_second,
                publish_rate_per_user=settings.publish_rate_per_user,
                queue_backlog_seconds=settings.fanout_queue_backlog_seconds,
            ),
            enforce_channel_permissions=settings.auth.mode == "jwt",
            channels_per_connection=settings.channels_per_connection,
            shards=settings.registry_shards,
            inline_max=settings.fanout_inline_max if settings.fanout_queue_url else 0,
            history=History(
                size=settings.history_size,
                ttl_seconds=settings.history_ttl_seconds,
                presence_max=settings.presence_max,
            ),
        )

    @property
    def max_age_seconds(self) -> int:
        """API Gateway's longest connection: an entry, or a queued job, at least this old reaches nobody."""
        return self._max_age_seconds

    @property
    def inline_max(self) -> int:
        """The largest audience a publish reads itself, and so what one job delivers (0: no queue)."""
        return self._inline_max

    @property
    def post_lease_chunk(self) -> int:
        """Posts a worker leases at once: a twentieth of a second of the budget, so the budget costs a
        worker one round trip per 50 ms of posting."""
        return max(1, self._limits.max_posts_per_second // _LEASES_PER_SECOND)

    def add(
        self,
        connection_id: str,
        connected_at_ms: int,
        principal: str | None = None,
        permissions: Permissions | None = None,
        channels: Sequence[str] = (),
    ) -> None:
        """Register a connection (``connected_at_ms`` is API Gateway's ``connectedAt``), with what its
        token lets it do with channels and the channels it asked for at connect, all in its shard.

        Raise ``ChannelForbidden`` or ``TooManyChannels`` (nothing written) when those are refused.
        """
        _check(connection_id)
        shard = self.shard_of(connection_id)
        seconds = connected_at_ms // 1000
        value = f"{seconds}:{principal_key(principal)}" if principal else str(seconds)
        permissions = permissions or Permissions()
        with _unavailable_on_error():
            reply = self._connect(
                keys=[
                    self._registry_key(shard),
                    self._connection_key(connection_id),
                    *(self._channel_key(channel, shard) for channel in channels),
                ],
                args=[
                    connection_id,
                    value,
                    self._max_age_seconds,
                    self._stale_cutoff(),
                    _PRUNE_SAMPLE_SIZE,
                    seconds + self._max_age_seconds,
                    1 if self._enforce else 0,
                    "\n".join(permissions.subscribe),
                    "\n".join(permissions.publish),
                    self._channels_per_connection,
                    principal or "",
                    *channels,
                ],
            )
        self._raise_refusal(reply)

    def remove(self, connection_id: str) -> None:
        """Forget a connection and its memberships, in one round trip."""
        _check(connection_id)
        shard = self.shard_of(connection_id)
        with _unavailable_on_error():
            self._leave(
                keys=[self._registry_key(shard), self._connection_key(connection_id)],
                args=[connection_id, self._channel_key("", shard), _TOMBSTONE_SECONDS],
            )

    def begin_publish(
        self,
        sender: str,
        connected_at_ms: int,
        *,
        include_sender: bool,
        channel: str | None = None,
        payload: bytes = b"{}",
    ) -> Snapshot | Queued:
        """Re-register the sender, check the channel, apply the limits, keep ``payload`` in its
        stream's history (giving it its offset: ``suffix``), read the audience (every connection, or the
        channel's members); one round trip with one shard. An audience larger than the inline max is not
        read: ``Queued`` says how large it is, shard by shard.

        Raise ``RateLimited``, ``OverCapacity`` or ``ChannelForbidden`` when refused (nothing read; the
        sender's token taken), ``ConnectionClosed`` when its ``$disconnect`` has run.
        """
        if self._shards == 1:
            reply = self._run_message(
                "publish", sender, connected_at_ms, channel=channel, echo=include_sender, payload=payload
            )
            return self._one_shard_publish(reply)

        def sender_checks() -> bool:
            return self._run_message("check", sender, connected_at_ms, channel=channel)[1] == 1

        return self._sharded_publish(channel, payload, sender_checks)

    def begin_backend_publish(self, channel: str | None = None, payload: bytes = b"{}") -> Snapshot | Queued:
        """A publish with no sender (``POST /publish``): the post budget, history, then the audience."""
        if self._shards == 1:
            return self._one_shard_publish(
                self._run_message("publish", "", 0, channel=channel, echo=True, payload=payload)
            )
        return self._sharded_publish(channel, payload, None)

    def touch(self, sender: str, connected_at_ms: int) -> bool:
        """A keepalive: re-register the sender if Redis lost it (then True), counting against its rate."""
        return self._run_message("ping", sender, connected_at_ms)[1] == 1

    def subscribe(
        self, sender: str, connected_at_ms: int, channel: str, since: tuple[int, str] | None = None
    ) -> Joined:
        """Join a channel (allowed by the token, within the per-connection count), and find its stream's
        position and, given ``since`` (offset, epoch), what the sender missed; one round trip with one
        shard. ``lost``: Redis had lost the sender."""
        return self._join("subscribe", sender, connected_at_ms, channel, since)

    def resume(self, sender: str, connected_at_ms: int, since: tuple[int, str]) -> Joined:
        """What the sender missed of the messages to everyone since ``since``; a message like any other."""
        return self._join("resume", sender, connected_at_ms, None, since)

    def presence(self, sender: str, connected_at_ms: int, channel: str) -> Presence:
        """Who is in a channel (the token must allow subscribing to it); a message like any other."""
        reply = self._run_message("presence", sender, connected_at_ms, channel=channel)
        if self._shards == 1:
            entries = list(zip(reply[2::2], reply[3::2], strict=True))
        else:
            with _unavailable_on_error():
                pipeline = self._client.pipeline(transaction=False)
                for shard in range(self._shards):
                    pipeline.hgetall(self._channel_key(channel, shard))
                entries = [entry for part in pipeline.execute() for entry in part.items()]
        cutoff = self._stale_cutoff()
        users: dict[str | None, int] = {}
        for _, value in entries:
            if _seconds(value) > cutoff:
                user = value.partition(":")[2] or None
                users[user] = users.get(user, 0) + 1
        ranked = sorted(users.items(), key=lambda member: (-member[1], member[0] or ""))
        return Presence(
            count=sum(users.values()), members=ranked[: self._history.presence_max], lost=int(reply[1]) == 1
        )

    def _join(
        self, mode: str, sender: str, connected_at_ms: int, channel: str | None, since: tuple[int, str] | None
    ) -> Joined:
        reply = self._run_message(mode, sender, connected_at_ms, channel=channel, since=since)
        lost = int(reply[1]) == 1
        if not self._history.size:
            return Joined(lost=lost)
        if self._shards > 1:
            with _unavailable_on_error():
                reply = [0, 0, *self._run_recover(channel, since or (-1, ""))]
        recovered, offset, epoch, *replay = reply[2:]
        return Joined(
            lost=lost,
            recovery=Recovery(
                offset=int(offset),
                epoch=epoch,
                recovered=None if int(recovered) < 0 else int(recovered) == 1,
                replay=[message.encode() for message in replay],
            ),
        )

    def unsubscribe(self, sender: str, connected_at_ms: int, channel: str) -> bool:
        return self._run_message("unsubscribe", sender, connected_at_ms, channel=channel)[1] == 1

    def refuse(self, sender: str, connected_at_ms: int) -> None:
        """A message refused before it reached the registry (it did not parse): it takes the sender's
        token like any other, and its error reply a post from the budget.

        Raise ``RateLimited`` when the sender is over its rate, ``ConnectionClosed`` as ``begin_publish``.
        """
        with contextlib.suppress(_CallerRefusal):
            self._run_message("refuse", sender, connected_at_ms)

    def read_shard(self, shard: int, channel: str | None = None) -> Snapshot:
        """One shard's part of an audience (a queued job's), in one command."""
        with _unavailable_on_error():
            entries = self._client.hgetall(self._audience_key(channel, shard))
        return self._snapshot(entries.items())

    def lease_posts(self, count: int) -> tuple[int, float]:
        """Take ``count`` posts from the whole API's budget, at most what it holds beyond the inline
        reserve, never into debt: (granted, 0), or (0, seconds until they are there). The queue's workers
        pace themselves with it."""
        if self._limits.max_posts_per_second <= 0:
            return count, 0.0
        with _unavailable_on_error():
            _, granted, wait_ms = self._run_budget(count, "lease")
        return int(granted), int(wait_ms) / 1000

    def forget(self, connection_ids: Iterable[str], channel: str | None = None) -> None:
        """Remove connections that are gone or stale (from the channel published to, too), one
        command per shard, in one round trip; nothing to do costs nothing. Their other memberships go
        when found stale or gone."""
        by_shard: dict[int, list[str]] = {}
        for connection_id in connection_ids:
            by_shard.setdefault(self.shard_of(connection_id), []).append(connection_id)
        if not by_shard:
            return
        with _unavailable_on_error():
            if channel is None and len(by_shard) == 1:
                ((shard, ids),) = by_shard.items()
                self._client.hdel(self._registry_key(shard), *ids)
                return
            pipeline = self._client.pipeline(transaction=False)
            for shard, ids in by_shard.items():
                pipeline.hdel(self._registry_key(shard), *ids)
                if channel is not None:
                    pipeline.hdel(self._channel_key(channel, shard), *ids)
            pipeline.execute()

    def registry_keys(self) -> list[str]:
        """Every shard's registry hash (for operators, tests and benchmarks)."""
        return [self._registry_key(shard) for shard in range(self._shards)]

    def shard_of(self, connection_id: str) -> int:
        """The shard that holds a connection, its memberships and its rate: stable for a given count."""
        return zlib.crc32(connection_id.encode()) % self._shards

    def _one_shard_publish(self, reply: list) -> Snapshot | Queued:
        lost = int(reply[1]) == 1
        if int(reply[0]) == _QUEUED:
            return Queued(sizes={0: int(reply[2])}, lost=lost, suffix=reply[3])
        return self._snapshot(zip(reply[3::2], reply[4::2], strict=True), lost=lost, suffix=reply[2])

    def _sharded_publish(
        self, channel: str | None, payload: bytes, sender_checks: Callable[[], bool] | None
    ) -> Snapshot | Queued:
        """Two round trips, each of two requests side by side in different slots: the sender's checks
        (``sender_checks``: its script in its shard; None for a backend publish) with the audience's size
        (one HLEN per shard, one pipeline); then the admission (the budget and the stream's append, one
        script in the unsharded slot) with the read of every shard that has members (one pipeline),
        unless the publish is queued. A refused sender reads nothing; a publish the budget refuses has
        read its audience for nothing (at most the inline max)."""
        sizes_of = functools.partial(self._sizes, channel)
        lost, sizes = self._side_by_side(sender_checks, sizes_of) if sender_checks else (False, sizes_of())
        cost = sum(sizes.values())  # the sender counts, echo or not: one post at most
        queued = bool(self._inline_max) and cost > self._inline_max

        def admit() -> list:
            if self._limits.max_posts_per_second <= 0 and not self._history.size:
                return [_GRANTED, cost, 0, ""]
            with _unavailable_on_error():
                reply = self._run_budget(
                    cost, "queue" if queued else "take", channel=channel, payload=payload
                )
            self._raise_refusal(reply)
            return reply

        if queued:
            return Queued(sizes=sizes, lost=lost, suffix=admit()[3])
        reply, entries = self._side_by_side(admit, functools.partial(self._read, channel, sizes))
        return self._snapshot(entries, lost=lost, suffix=reply[3])

    def _sizes(self, channel: str | None) -> dict[int, int]:
        """The audience's size in each shard that has members, in one pipeline."""
        with _unavailable_on_error():
            pipeline = self._client.pipeline(transaction=False)
            for shard in range(self._shards):
                pipeline.hlen(self._audience_key(channel, shard))
            return {shard: size for shard, size in enumerate(pipeline.execute()) if size}

    def _read(self, channel: str | None, sizes: dict[int, int]) -> list[tuple[str, str]]:
        """The audience's entries in the shards that have members, in one pipeline."""
        if not sizes:
            return []
        with _unavailable_on_error():
            pipeline = self._client.pipeline(transaction=False)
            for shard in sizes:
                pipeline.hgetall(self._audience_key(channel, shard))
            return [entry for shard_entries in pipeline.execute() for entry in shard_entries.items()]

    def _side_by_side(self, here: Callable[[], Any], there: Callable[[], Any]) -> tuple[Any, Any]:
        """Two requests to different slots at once: one round trip's wait, not two. ``there`` runs on the
        registry's own thread; when either raises, both have finished first (``here``'s error wins)."""
        future = self._other_slot.submit(there)
        try:
            mine = here()
        finally:
            futures.wait([future])
        return mine, future.result()

    @functools.cached_property
    def _other_slot(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")

    def _run_recover(self, channel: str | None, since: tuple[int, str]) -> list:
        """A sharded subscribe's or resume's recovery, in the stream's (unsharded) slot."""
        return self._recover(
            keys=[self._history_key(channel), self._position_key(channel), self._posts_key()],
            args=[_POSITION_TTL_SECONDS, *since, self._limits.max_posts_per_second, self._bucket_now_ms()],
        )

    def _run_budget(self, count: int, mode: str, *, channel: str | None = None, payload: bytes = b"") -> list:
        """The budgets' script: ``take`` (an inline publish's cost), ``queue`` (a queued one's), each with
        the stream's append, or ``lease`` (a worker's chunk)."""
        limits, history = self._limits, self._history
        return self._budget(
            keys=[
                self._posts_key(),
                self._queue_budget_key(),
                self._history_key(channel),
                self._position_key(channel),
            ],
            args=[
                limits.max_posts_per_second,
                count,
                mode,
                limits.inline_reserve,
                limits.queue_backlog,
                self._bucket_now_ms(),
                history.size if mode != "lease" else 0,
                history.ttl_seconds,
                _POSITION_TTL_SECONDS,
                payload,
            ],
        )

    def _run_message(
        self,
        mode: str,
        sender: str,
        connected_at_ms: int,
        *,
        channel: str | None = None,
        echo: bool = False,
        payload: bytes = b"",
        since: tuple[int, str] | None = None,
    ) -> list:
        if sender:
            _check(sender)
        shard = self.shard_of(sender)
        limits = self._limits
        seconds = connected_at_ms // 1000
        one_shard = self._shards == 1
        # resume recovers the messages to everyone; the others, the stream of the channel they name
        stream = None if mode == "resume" else channel
        since_offset, since_epoch = since or (-1, "")
        with _unavailable_on_error():
            reply = self._message(
                keys=[
                    self._registry_key(shard),
                    self._hash_tagged(f"rate:{sender}", shard),
                    # With shards, every key of one script is in the sender's slot: the budgets are not
                    # used in this script then (mode check), so their keys there are never written.
                    self._posts_key() if one_shard else self._hash_tagged("posts", shard),
                    self._connection_key(sender),
                    self._audience_key(channel, shard),
                    self._queue_budget_key() if one_shard else self._hash_tagged("queued", shard),
                    self._history_key(stream) if one_shard else self._hash_tagged("history", shard),
                    self._position_key(stream) if one_shard else self._hash_tagged("position", shard),
                ],
                args=[
                    sender,
                    seconds,
                    self._max_age_seconds,
                    limits.publish_rate_per_second,
                    limits.publish_burst,
                    limits.max_posts_per_second,
                    mode,
                    channel or "",
                    1 if echo else 0,
                    1 if self._enforce else 0,
                    self._channels_per_connection,
                    seconds + self._max_age_seconds,
                    self._inline_max,
                    limits.publish_rate_per_user,
                    limits.queue_backlog,
                    limits.inline_reserve,
                    1 if one_shard else 0,  # the post budget is this script's: replies are paid from it
                    self._hash_tagged("user:", shard),  # + the sender's principal key: its user's bucket
                    self._bucket_now_ms(),
                    self._history.size if one_shard else 0,  # sharded, the stream script keeps history
                    self._history.ttl_seconds,
                    _POSITION_TTL_SECONDS,
                    payload if one_shard and self._history.size else b"",
                    since_offset,
                    since_epoch,
                ],
            )
        self._raise_refusal(reply)
        return reply

    def _snapshot(
        self, entries: Iterable[tuple[str, str]], *, lost: bool = False, suffix: str = ""
    ) -> Snapshot:
        cutoff = self._stale_cutoff()
        young_since = int(self._clock()) - HANDSHAKE_WINDOW_SECONDS
        live, stale, young = [], [], []
        for connection_id, value in entries:
            connected_at = _seconds(value)
            (stale if connected_at <= cutoff else live).append(connection_id)
            if connected_at >= young_since:
                young.append(connection_id)
        return Snapshot(live=live, stale=stale, lost=lost, young=frozenset(young), suffix=suffix)

    def _raise_refusal(self, reply: list) -> None:
        """Turn a script's refusal into the exception that says why."""
        outcome = int(reply[0])
        if outcome in (_GRANTED, _QUEUED):
            return
        if outcome == _CLOSED:
            raise ConnectionClosed("the connection's $disconnect has run")
        first = int(reply[2]) == 1
        if outcome in _OVER_LIMITS:
            raise _OVER_LIMITS[outcome](int(reply[1]) / 1000, first=first)
        if outcome == _FORBIDDEN:
            raise ChannelForbidden(reply[3], first=first)
        if outcome == _TOO_MANY:
            raise TooManyChannels(f"at most {self._channels_per_connection} channels", first=first)
        raise _CallerRefusal("refused by the caller", first=first)

    def _hash_tagged(self, name: str, shard: int) -> str:
        """A key in one shard's slot; with one shard, the keys are those of an unsharded registry."""
        tag = self._prefix if self._shards == 1 else f"{self._prefix}:{shard}"
        return _hash_tagged(tag, name)

    def _registry_key(self, shard: int) -> str:
        return self._hash_tagged("connections", shard)

    def _posts_key(self) -> str:
        return _hash_tagged(self._prefix, "posts")

    def _queue_budget_key(self) -> str:
        return _hash_tagged(self._prefix, "queued")

    def _history_key(self, channel: str | None) -> str:
        """A stream's kept messages: the channel's, or (None) the messages to everyone's; in the unsharded
        slot, whatever the shard count (one stream, however many shards its members are in)."""
        return _hash_tagged(self._prefix, "history" if channel is None else f"history:{channel}")

    def _position_key(self, channel: str | None) -> str:
        return _hash_tagged(self._prefix, "position" if channel is None else f"position:{channel}")

    def _connection_key(self, connection_id: str) -> str:
        return self._hash_tagged(f"conn:{connection_id}", self.shard_of(connection_id))

    def _channel_key(self, channel: str, shard: int) -> str:
        return self._hash_tagged(f"ch:{channel}", shard)

    def _audience_key(self, channel: str | None, shard: int) -> str:
        return self._registry_key(shard) if channel is None else self._channel_key(channel, shard)

    def _bucket_now_ms(self) -> int:
        """The buckets' time: -1, Redis's own (TIME), unless a test steps a clock of its own."""
        return -1 if self._bucket_clock is None else int(self._bucket_clock() * 1000)

    def _stale_cutoff(self) -> int:
        """An entry connected at or before this second has reached the maximum age."""
        return int(self._clock()) - self._max_age_seconds


def principal_key(principal: str) -> str:
    """What the registry keeps of a principal (``sub``): short, fixed-size, and the same for every token."""
    digest = hashlib.blake2b(principal.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def registry_key(prefix: str) -> str:
    """The registry hash; the braces are a hash tag, so cluster mode keeps every key on one slot."""
    return _hash_tagged(prefix, "connections")


def _hash_tagged(prefix: str, name: str) -> str:
    return f"{{{prefix}}}:{name}"


def _check(connection_id: str) -> None:
    if not isinstance(connection_id, str) or not _CONNECTION_ID.match(connection_id):
        raise InvalidConnectionId(f"not an API Gateway connection id: {connection_id!r}")


def _seconds(value: str) -> int:
    """A stored connectedAt; an unreadable one (written by hand) counts as stale, not as a crash."""
    try:
        return int(value.partition(":")[0])
    except ValueError:
        return 0


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn every Redis failure into ``RegistryUnavailable``, keeping the cause for the logs."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as error:
        raise RegistryUnavailable(f"Redis failed: {error}") from error
