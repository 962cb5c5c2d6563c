"""Fakes of AWS for the tests, the benchmarks and the local gateway: one home, never deployed.

``apigw``: API Gateway's limits and the WebSocket events it builds; ``management_api``: a strict
stand-in for the Management API; ``sigv4``: the signature checks API Gateway makes; ``lambda_context``:
the context Lambda passes a handler; ``sqs``: SQS (moto over HTTP) and the SQS events Lambda sends;
``aws``: the dummy AWS environment that keeps everything off AWS.
Nothing in ``chalicelib/`` imports this package.
"""
