"""The fan-out baselines, served by the local gateway beside our app: one post after another.

``BASELINE_STRATEGY`` picks how a publish reaches its recipients:
  sequential    boto3's ``post_to_connection`` for each recipient in turn (the Go reference's way)
  chalice_send  ``app.websocket_api.send`` in a loop (Chalice's WebSocket tutorial's way)
Connections are kept in our registry, so only the fan-out differs from ours.
"""

import contextlib
import functools
import os
import sys
from pathlib import Path

import boto3
from chalice import Chalice, WebsocketDisconnectedError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's chalicelib

from chalicelib import envelope
from chalicelib.gateway_event import GatewayEvent
from chalicelib.registry import ConnectionRegistry
from chalicelib.settings import Settings

app = Chalice(app_name="fanout-baseline")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()


@functools.cache
def registry() -> ConnectionRegistry:
    return ConnectionRegistry.from_settings(Settings.from_env(os.environ))


@functools.cache
def boto3_client():
    return app.websocket_api.session.client("apigatewaymanagementapi")


@app.on_ws_connect()
def connect(event):
    gateway_event = GatewayEvent.from_dict(event.to_dict())
    registry().add(gateway_event.connection_id, gateway_event.connected_at_ms)
    return {"statusCode": 200}


@app.on_ws_disconnect()
def disconnect(event):
    registry().remove(GatewayEvent.from_dict(event.to_dict()).connection_id)
    return {"statusCode": 200}


@app.on_ws_message()
def message(event):
    gateway_event = GatewayEvent.from_dict(event.to_dict())
    publication = envelope.parse(gateway_event.body)
    payload = envelope.encode_publication(publication, received=gateway_event.request_time_ms // 1000)
    post = _chalice_send if os.environ.get("BASELINE_STRATEGY") == "chalice_send" else _boto3_post
    audience = registry().begin_publish(
        gateway_event.connection_id, gateway_event.connected_at_ms, include_sender=publication.echo
    )
    for connection_id in audience.live:
        if publication.echo or connection_id != gateway_event.connection_id:
            post(connection_id, payload)
    return {"statusCode": 200}


def _boto3_post(connection_id: str, payload: bytes) -> None:
    client = boto3_client()
    with contextlib.suppress(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId=connection_id, Data=payload)


def _chalice_send(connection_id: str, payload: bytes) -> None:
    with contextlib.suppress(WebsocketDisconnectedError):
        app.websocket_api.send(connection_id, payload.decode())
