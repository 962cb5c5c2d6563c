"""Fakes of AWS for the tests, the benchmarks and the local gateway: one home, never deployed.

``apigw``: API Gateway's limits and the WebSocket events it builds; ``management_api``: a strict
stand-in for the Management API; ``sigv4``: the signature checks API Gateway makes; ``lambda_context``:
the context Lambda passes a handler; ``sqs``: SQS (moto over HTTP) and the SQS events Lambda sends;
``aws``: the dummy AWS environment that keeps everything off AWS.
``redis_server``, ``tls``, ``tcp_proxy``, ``command_log``, ``json_http``, ``identity_provider`` and
``gateway_process``: real parts (redis-server, a local CA, a TCP proxy with faults, MONITOR, an HTTP
server, a token issuer, localgw as a subprocess) the tests and the benchmarks share.
Nothing in ``chalicelib/`` imports this package.
"""

from pathlib import Path

# The repository's root: where ``python -m`` finds this package and ``localgw`` for a subprocess.
REPO = Path(__file__).resolve().parents[1]
