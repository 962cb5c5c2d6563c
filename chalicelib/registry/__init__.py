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

from chalicelib.registry.client import redis_client
from chalicelib.registry.connections import ConnectionRegistry
from chalicelib.registry.keys import principal_key, registry_key
from chalicelib.registry.outcomes import (
    HANDSHAKE_WINDOW_SECONDS,
    INLINE_RESERVE_SECONDS,
    ChannelForbidden,
    ChannelRefused,
    ConnectionClosed,
    History,
    InvalidConnectionId,
    Joined,
    Limits,
    OverCapacity,
    OverLimit,
    Presence,
    Queued,
    RateLimited,
    Recovery,
    Refusal,
    RegistryUnavailable,
    Snapshot,
    TooManyChannels,
)

__all__ = [
    "HANDSHAKE_WINDOW_SECONDS",
    "INLINE_RESERVE_SECONDS",
    "ChannelForbidden",
    "ChannelRefused",
    "ConnectionClosed",
    "ConnectionRegistry",
    "History",
    "InvalidConnectionId",
    "Joined",
    "Limits",
    "OverCapacity",
    "OverLimit",
    "Presence",
    "Queued",
    "RateLimited",
    "Recovery",
    "Refusal",
    "RegistryUnavailable",
    "Snapshot",
    "TooManyChannels",
    "principal_key",
    "redis_client",
    "registry_key",
]
