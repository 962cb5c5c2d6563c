"""The cold-start baseline: the least a Chalice WebSocket app on boto3 and Redis imports."""

import boto3
import redis  # noqa: F401 - imported for its cost, as any Redis-backed app pays it
from chalice import Chalice

app = Chalice(app_name="minimal")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.websocket_api.session = boto3.session.Session()


@app.on_ws_message()
def message(event):
    return {"statusCode": 200}
