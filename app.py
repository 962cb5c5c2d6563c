"""STUB for the infra branch only: main's app.py (issue 2) replaces this file on merge.

It registers the three WebSocket handlers so `chalice package` generates the same resources
(WebsocketConnect, WebsocketMessage, WebsocketDisconnect, DefaultRole, WebsocketAPI) as the real app.
"""

from chalice import Chalice

app = Chalice(app_name="ws-broadcast")
app.experimental_feature_flags.update(["WEBSOCKETS"])


@app.on_ws_connect()
def connect(event):
    return {"statusCode": 200}


@app.on_ws_message()
def message(event):
    return {"statusCode": 200}


@app.on_ws_disconnect()
def disconnect(event):
    return {"statusCode": 200}
