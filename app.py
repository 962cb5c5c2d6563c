"""A WebSocket broadcast service: every message a client sends is published to all connected clients,
or to a channel's members; a backend publishes the same way with ``POST /publish`` (AWS IAM).

Five thin handlers (the fifth delivers queued broadcasts); the work is in ``chalicelib/``. Each
invocation runs inside ``_invocation``: its log lines' keys, and its one CloudWatch metrics document.
The wiring (settings -> registry -> fan-out) is built on the first invocation and kept for the
container's life: once per cold start.
"""

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import boto3
from chalice import Chalice, IAMAuthorizer, Response
from chalice.app import SQSEvent, WebsocketEvent

from chalicelib import metrics, wiring
from chalicelib.broadcast import Broadcaster
from chalicelib.gateway_event import GatewayEvent
from chalicelib.log import invocation_keys, request_id_of
from chalicelib.settings import Settings

app = Chalice(app_name="ws-broadcast")
# Chalice 1.34 still marks WebSocket APIs experimental; `chalice package` and `deploy` refuse without this.
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()


@functools.cache
def configured() -> wiring.Service:
    """Read the settings and build the service once; a bad setting raises on every call until fixed."""
    return wiring.service(Settings.from_env(os.environ), app.websocket_api.session)


def broadcaster() -> Broadcaster:
    return configured().broadcaster


@contextlib.contextmanager
def _invocation(context, *, connection_id: str, route: str) -> Iterator[float]:
    """What every invocation has around it: its log lines' keys, and its one EMF metrics document
    (written on the way out, whatever the outcome), as Powertools' logger and metrics decorators do;
    gives the seconds Lambda leaves the invocation."""
    namespace = configured().settings.metrics_namespace
    with (
        invocation_keys(request_id=request_id_of(context), connection_id=connection_id, route=route),
        metrics.recording(namespace, context.function_name),
    ):
        yield context.get_remaining_time_in_millis() / 1000


def _websocket(handler: Callable[[GatewayEvent, float], dict]) -> Callable[[WebsocketEvent], dict]:
    """A WebSocket handler on the typed event and the seconds Lambda leaves it, inside its invocation."""

    @functools.wraps(handler)
    def on_event(event: WebsocketEvent) -> dict:
        gateway_event = GatewayEvent.from_dict(event.to_dict())
        route = gateway_event.route_key
        with _invocation(event.context, connection_id=gateway_event.connection_id, route=route) as remaining:
            return handler(gateway_event, remaining)

    return on_event


@app.on_ws_connect()
@_websocket
def connect(event: GatewayEvent, remaining_seconds: float) -> dict:
    return broadcaster().connect(event)


@app.on_ws_message()
@_websocket
def message(event: GatewayEvent, remaining_seconds: float) -> dict:
    return broadcaster().publish(event, remaining_seconds)


@app.on_ws_disconnect()
@_websocket
def disconnect(event: GatewayEvent, remaining_seconds: float) -> dict:
    return broadcaster().disconnect(event)


# One job an invocation: each is up to FANOUT_INLINE_MAX posts, so jobs run side by side in as many
# workers as the mapping's maximum concurrency allows, and a backlog waits in the queue, not in a batch.
@app.on_sqs_message(queue="ws-broadcast-fanout", batch_size=1, name="fanout_worker")
def fanout_worker(event: SQSEvent) -> dict:
    """Delivers queued broadcasts' jobs; the jobs to retry are reported, so SQS retries only those."""
    with _invocation(event.context, connection_id="", route="fanout") as remaining_seconds:
        records = [(record.to_dict()["messageId"], record.body) for record in event]
        retry = configured().worker.deliver_jobs(records, remaining_seconds)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in retry]}


@app.route("/publish", methods=["POST"], authorizer=IAMAuthorizer(), content_types=["application/json"])
def publish_from_backend() -> Response:
    """A backend publishes with a SigV4-signed request (``ws_broadcast_client.publish_from_backend``): the same envelope."""
    with _invocation(app.lambda_context, connection_id="", route="POST /publish") as remaining_seconds:
        status, report = broadcaster().publish_from_backend(app.current_request.raw_body, remaining_seconds)
    return Response(body=report, status_code=status, headers={"Content-Type": "application/json"})
