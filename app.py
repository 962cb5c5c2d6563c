"""A WebSocket broadcast service: every message a client sends is published to all connected clients,
or to a channel's members; a backend publishes the same way with ``POST /publish`` (AWS IAM).

Five thin handlers (the fifth delivers queued broadcasts); the work is in ``chalicelib/``. The wiring
(settings -> registry -> fan-out) is built on the first invocation and kept for the container's life:
once per cold start.
"""

import functools
import os

import boto3
from chalice import Chalice, IAMAuthorizer, Response
from chalice.app import SQSEvent, WebsocketEvent

from chalicelib.broadcast import Broadcaster
from chalicelib.gateway_event import GatewayEvent
from chalicelib.log import invocation_keys, request_id_of
from chalicelib.settings import Settings

app = Chalice(app_name="ws-broadcast")
# Chalice 1.34 still marks WebSocket APIs experimental; `chalice package` and `deploy` refuse without this.
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()


@functools.cache
def broadcaster() -> Broadcaster:
    """Read the settings and build the service once; a bad setting raises on every call until fixed."""
    return Broadcaster.from_settings(Settings.from_env(os.environ), app.websocket_api.session)


@app.on_ws_connect()
def connect(event: WebsocketEvent) -> dict:
    gateway_event = GatewayEvent.from_dict(event.to_dict())
    with _logged(event, gateway_event):
        return broadcaster().connect(gateway_event)


@app.on_ws_message()
def message(event: WebsocketEvent) -> dict:
    gateway_event = GatewayEvent.from_dict(event.to_dict())
    remaining_seconds = event.context.get_remaining_time_in_millis() / 1000
    with _logged(event, gateway_event):
        return broadcaster().publish(gateway_event, remaining_seconds)


@app.on_ws_disconnect()
def disconnect(event: WebsocketEvent) -> dict:
    gateway_event = GatewayEvent.from_dict(event.to_dict())
    with _logged(event, gateway_event):
        return broadcaster().disconnect(gateway_event)


# One job an invocation: each is up to FANOUT_INLINE_MAX posts, so jobs run side by side in as many
# workers as the mapping's maximum concurrency allows, and a backlog waits in the queue, not in a batch.
@app.on_sqs_message(queue="ws-broadcast-fanout", batch_size=1, name="fanout_worker")
def fanout_worker(event: SQSEvent) -> dict:
    """Delivers queued broadcasts' jobs; the jobs to retry are reported, so SQS retries only those."""
    context = event.context
    with invocation_keys(request_id=request_id_of(context), connection_id="", route="fanout"):
        records = [(record.to_dict()["messageId"], record.body) for record in event]
        retry = broadcaster().deliver_jobs(records, context.get_remaining_time_in_millis() / 1000)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in retry]}


def _logged(event: WebsocketEvent, gateway_event: GatewayEvent):
    return invocation_keys(
        request_id=request_id_of(event.context),
        connection_id=gateway_event.connection_id,
        route=gateway_event.route_key,
    )


@app.route("/publish", methods=["POST"], authorizer=IAMAuthorizer(), content_types=["application/json"])
def publish_from_backend() -> Response:
    """A backend publishes with a SigV4-signed request (``clients/python/publish.py``): the same envelope."""
    context = app.lambda_context
    with invocation_keys(request_id=request_id_of(context), connection_id="", route="POST /publish"):
        remaining_seconds = context.get_remaining_time_in_millis() / 1000
        status, report = broadcaster().publish_from_backend(app.current_request.raw_body, remaining_seconds)
    return Response(body=report, status_code=status, headers={"Content-Type": "application/json"})
