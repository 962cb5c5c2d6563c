"""ws-broadcast's Python client: ``Client`` (asyncio, reconnects, resubscribes and recovers by itself)
and ``publish_from_backend`` (a backend's signed ``POST /publish``; ``pip install ...[sigv4]``).

    from ws_broadcast_client import Client

    async with Client("wss://ID.execute-api.REGION.amazonaws.com/api", token=None) as client:
        await client.subscribe("room-1")
        await client.publish({"x": 1}, type=1, channel="room-1")
        async for message in client:
            print(message.type, message.data, message.channel, message.offset)
"""

from ws_broadcast_client.backend import publish_from_backend
from ws_broadcast_client.backoff import Backoff
from ws_broadcast_client.client import Client
from ws_broadcast_client.errors import (
    AuthenticationFailed,
    ChannelForbidden,
    ClientError,
    ConnectionLost,
    InvalidRequest,
    OverCapacity,
    PublishError,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    TooManyChannels,
)
from ws_broadcast_client.wire import Gap, Message

__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "ChannelForbidden",
    "Client",
    "ClientError",
    "ConnectionLost",
    "Gap",
    "InvalidRequest",
    "Message",
    "OverCapacity",
    "PublishError",
    "RateLimited",
    "ServiceError",
    "ServiceUnavailable",
    "TooManyChannels",
    "publish_from_backend",
]
