"""Where a stage's Management API is: the endpoint rules, as Chalice and botocore derive them."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from botocore.endpoint_provider import EndpointProvider
from botocore.loaders import create_loader

from chalicelib.settings import Settings

# The service's botocore name (its endpoint rules).
SERVICE_NAME = "apigatewaymanagementapi"


def endpoint_url(settings: Settings, api_id: str, stage: str) -> str:
    """Where to post, derived as Chalice does from the event; botocore's variable wins when set.

    Using the execute-api host (not the event's ``domainName``) keeps posts working behind custom
    domain names, whose base path mappings do not serve ``@connections``. The host of each partition
    (``amazonaws.com.cn``, ``c2s.ic.gov``, ...) comes from botocore's endpoint rules for the service.
    """
    if settings.management_api_endpoint_override:
        return settings.management_api_endpoint_override
    return f"https://{api_id}.{_execute_api_host(settings.aws_region)}/{stage}"


@functools.cache
def _execute_api_host(region: str) -> str:
    """``execute-api.{region}.{partition's DNS suffix}``, as botocore's rules resolve it."""
    loader = create_loader()
    provider = EndpointProvider(
        loader.load_service_model(SERVICE_NAME, "endpoint-rule-set-1"), loader.load_data("partitions")
    )
    return urlsplit(provider.resolve_endpoint(Region=region, UseFIPS=False, UseDualStack=False).url).netloc
