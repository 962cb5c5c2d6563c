"""The API Gateway Management API (``POST /@connections/{id}``): the only package that talks to API
Gateway, in layers, each with its tests:

- ``endpoint``: where a stage's Management API is (the endpoint rules, botocore's partitions);
- ``http11``: the request's bytes and the answer's reading, without I/O;
- ``transport``: the thin socket loop: a connection dialled as botocore dials one (its proxies, its CA
  bundle), checked for a drop before reuse, every send and read bounded by the caller's deadline;
- ``client``: ``ManagementApi``, a post signed with botocore's SigV4 and its answer mapped to what the
  caller must do (``Gone``, ``DeliveryError.retryable``), and ``ManagementApis``, one per endpoint.

The request and its answer's head are our own few lines: urllib3's request path costs more CPU per
post than boto3's whole client saves (README, Performance), and it cannot keep several posts in
flight on one thread.
"""

from chalicelib.management_api.client import (
    RETRYABLE_STATUSES,
    SIGNING_SERVICE,
    DeliveryError,
    Gone,
    ManagementApi,
    ManagementApis,
)
from chalicelib.management_api.endpoint import SERVICE_NAME, endpoint_url
from chalicelib.management_api.transport import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "READ_TIMEOUT_SECONDS",
    "RETRYABLE_STATUSES",
    "SERVICE_NAME",
    "SIGNING_SERVICE",
    "DeliveryError",
    "Gone",
    "ManagementApi",
    "ManagementApis",
    "endpoint_url",
]
