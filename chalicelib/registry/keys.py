"""Every key the registry writes, named in one place. Each key carries a cluster hash tag: ``{PREFIX}``
with one shard, ``{PREFIX:k}`` for shard ``k`` of several, so that all a script touches is in one slot.
The budgets and the streams stay in ``{PREFIX}`` whatever the shard count."""

from __future__ import annotations

import base64
import hashlib
import re
import zlib

from chalicelib.registry.outcomes import InvalidConnectionId

# API Gateway ids are 16 characters of base64 ("ZJ8cWdV9iYcCIkg="); allow any plain token.
_CONNECTION_ID = re.compile(r"^[A-Za-z0-9+/=_-]{1,128}$")


class Keys:
    def __init__(self, prefix: str, shards: int) -> None:
        self._prefix = prefix
        self.shards = shards

    def shard_of(self, connection_id: str) -> int:
        """The shard that holds a connection, its memberships and its rates: stable for a given count."""
        return zlib.crc32(connection_id.encode()) % self.shards

    def in_shard(self, name: str, shard: int) -> str:
        """A key in one shard's slot; with one shard, the keys are those of an unsharded registry."""
        tag = self._prefix if self.shards == 1 else f"{self._prefix}:{shard}"
        return hash_tagged(tag, name)

    def registry(self, shard: int) -> str:
        return self.in_shard("connections", shard)

    def connection(self, connection_id: str) -> str:
        return self.in_shard(f"conn:{connection_id}", self.shard_of(connection_id))

    def rate(self, connection_id: str) -> str:
        return self.in_shard(f"rate:{connection_id}", self.shard_of(connection_id))

    def user_prefix(self, shard: int) -> str:
        """A user's bucket is this and the principal key (the script completes it: it knows the principal)."""
        return self.in_shard("user:", shard)

    def channel(self, channel: str, shard: int) -> str:
        return self.in_shard(f"ch:{channel}", shard)

    def audience(self, channel: str | None, shard: int) -> str:
        return self.registry(shard) if channel is None else self.channel(channel, shard)

    def posts(self) -> str:
        return hash_tagged(self._prefix, "posts")

    def queued(self) -> str:
        return hash_tagged(self._prefix, "queued")

    def history(self, channel: str | None) -> str:
        """A stream's kept messages: the channel's, or (None) the messages to everyone's; one stream,
        however many shards its members are in."""
        return hash_tagged(self._prefix, "history" if channel is None else f"history:{channel}")

    def position(self, channel: str | None) -> str:
        return hash_tagged(self._prefix, "position" if channel is None else f"position:{channel}")

    def appended(self, publish_id: str) -> str:
        """One publish's mark that its message is kept (streams.lua's ``append``), in the streams' slot."""
        return hash_tagged(self._prefix, f"appended:{publish_id}")


def principal_key(principal: str) -> str:
    """What the registry keeps of a principal (``sub``): short, fixed-size, and the same for every token."""
    digest = hashlib.blake2b(principal.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def registry_key(prefix: str) -> str:
    """The registry hash; the braces are a hash tag, so cluster mode keeps every key on one slot."""
    return hash_tagged(prefix, "connections")


def hash_tagged(prefix: str, name: str) -> str:
    return f"{{{prefix}}}:{name}"


def check_connection_id(connection_id: str) -> None:
    if not isinstance(connection_id, str) or not _CONNECTION_ID.match(connection_id):
        raise InvalidConnectionId(f"not an API Gateway connection id: {connection_id!r}")
