"""A tiny Chalice WebSocket app that exercises the local gateway (not our product).

Every handler appends the event and context it received to the JSON-lines file named by
``FIXTURE_EVENT_LOG`` (when set), so tests can compare them with recorded API Gateway events.
Messages are JSON objects ``{"do": <command>, ...}``:

- ``whoami``: sends back ``{"connection_id": ...}``
- ``echo``: posts the body back through a plain boto3 client (``AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI``)
- ``send``: posts ``text`` back through Chalice's own ``app.websocket_api.send``
- ``broadcast``: posts ``text`` to every connection this process has seen connect (``echo`` to include self)
- ``raise`` / ``sleep`` (``seconds``) / ``status`` (returns ``code``) / ``unserializable``
- ``exit``: ends the whole runtime process (``os._exit``)
- ``context``: posts what the Lambda context and environment looked like
- ``info`` / ``close``: ``app.websocket_api.info`` / ``.close`` on ``target`` (default: self)
- ``late``: sleeps ``seconds``, prints ``late done``, then raises when ``fail`` (a handler past its timeout)
- ``print``: prints ``lines`` JSON log lines of ``size`` characters and one plain line (``plain``)

``fixture_worker`` (``@app.on_sqs_message``, queue ``fixture-jobs``, batches of 3) records its event and
acts on each record's body: ``ok``; ``fail`` (named in ``batchItemFailures``); ``fail-once`` (named on its
first receive only); ``raise-once`` (the whole invocation raises on that record's first receive).

``$connect`` refuses with ``?reject=<status>`` (body ``{"message": <message>}`` with ``&message=``),
raises with ``?raise=1``, sleeps with ``?sleep=<s>`` (printing ``connect sleeps``), selects the subprotocol ``?select=<name>``.
"""

import contextlib
import json
import os
import threading
import time

import boto3
from chalice import Chalice, Response, WebsocketDisconnectedError

app = Chalice(app_name="localgw-fixture")
app.websocket_api.session = boto3.Session()

_lock = threading.Lock()
_connections: set[str] = set()
_client = None


def _record(kind, event, context):
    path = os.environ.get("FIXTURE_EVENT_LOG")
    if not path:
        return
    line = json.dumps(
        {
            "kind": kind,
            "received_ms": int(time.time() * 1000),
            "event": event.to_dict(),
            "context": {
                "aws_request_id": context.aws_request_id,
                "function_name": context.function_name,
                "memory_limit_in_mb": context.memory_limit_in_mb,
                "invoked_function_arn": context.invoked_function_arn,
                "log_group_name": context.log_group_name,
                "log_stream_name": context.log_stream_name,
                "remaining_ms": context.get_remaining_time_in_millis(),
            },
        }
    )
    with _lock, open(path, "a") as f:
        f.write(line + "\n")


def _boto_client():
    global _client
    if _client is None:
        _client = boto3.client("apigatewaymanagementapi")  # endpoint from the environment
    return _client


@app.on_ws_connect()
def connect(event):
    _record("connect", event, event.context)
    query = event.to_dict().get("queryStringParameters") or {}
    if "sleep" in query:
        print(f"connect sleeps {query['sleep']}", flush=True)
        time.sleep(float(query["sleep"]))
    if "raise" in query:
        raise RuntimeError("connect failed on purpose")
    if "reject" in query:
        body = json.dumps({"message": query["message"]}) if "message" in query else ""
        return Response(body=body, status_code=int(query["reject"]))
    with _lock:
        _connections.add(event.connection_id)
    if "select" in query:
        return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": query["select"]}}
    return None


@app.on_ws_message()
def message(event):
    _record("message", event, event.context)
    body = event.json_body
    command = body.get("do")
    me = event.connection_id
    if command == "whoami":
        app.websocket_api.send(me, json.dumps({"connection_id": me}))
    elif command == "echo":
        _boto_client().post_to_connection(ConnectionId=me, Data=event.body.encode())
    elif command == "send":
        app.websocket_api.send(me, body["text"])
    elif command == "broadcast":
        with _lock:
            targets = sorted(_connections)
        for target in targets:
            if target == me and not body.get("echo"):
                continue
            with contextlib.suppress(WebsocketDisconnectedError):
                app.websocket_api.send(target, body["text"])
    elif command == "raise":
        raise RuntimeError("message failed on purpose")
    elif command == "exit":
        os._exit(3)  # the whole runtime dies, as a crashing C extension would take a container down
    elif command == "sleep":
        time.sleep(float(body["seconds"]))
        app.websocket_api.send(me, "slept")
    elif command == "late":
        time.sleep(float(body["seconds"]))
        print("late done", flush=True)
        if body.get("fail"):
            raise RuntimeError("failed after its timeout")
    elif command == "print":
        for n in range(int(body["lines"])):
            print(json.dumps({"level": "INFO", "n": n, "pad": "x" * int(body["size"])}))
        print(body["plain"])
    elif command == "status":
        return {"statusCode": int(body["code"])}
    elif command == "unserializable":
        return {"statusCode": 200, "body": object()}
    elif command == "context":
        ctx = event.context
        app.websocket_api.send(
            me,
            json.dumps(
                {
                    "function_name": ctx.function_name,
                    "remaining_ms": ctx.get_remaining_time_in_millis(),
                    "env": {k: os.environ.get(k) for k in ("FIXTURE_TOP", "FIXTURE_STAGE", "FIXTURE_FN")},
                    "endpoint": os.environ.get("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"),
                    "redis_url": os.environ.get("REDIS_URL"),
                    "pid": os.getpid(),
                }
            ),
        )
    elif command == "info":
        info = app.websocket_api.info(body.get("target", me))
        app.websocket_api.send(me, json.dumps(info, default=str))
    elif command == "close":
        app.websocket_api.close(body.get("target", me))
    return None


@app.on_ws_disconnect()
def disconnect(event):
    _record("disconnect", event, event.context)
    with _lock:
        _connections.discard(event.connection_id)


@app.on_sqs_message(queue="fixture-jobs", batch_size=3, name="fixture_worker")
def fixture_worker(event):
    _record("sqs", event, event.context)
    failures = []
    for record in event.to_dict()["Records"]:
        first = record["attributes"]["ApproximateReceiveCount"] == "1"
        if record["body"] == "raise-once" and first:
            raise RuntimeError("worker failed on purpose")
        if record["body"] == "fail" or (record["body"] == "fail-once" and first):
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


@app.route("/items/{name}", methods=["GET", "PUT"])
def item(name):
    """A REST route of another project: the gateway serves it beside the WebSocket API, on one port."""
    request = app.current_request
    return {"name": name, "method": request.method, "body": request.json_body, "query": request.query_params}
