import uuid

import pytest

from tests.support.gateway_driver import GatewayDriver


@pytest.fixture
def app_module(monkeypatch, redis_server, management_api):
    """The unchanged app, configured as a stage would be, with a fresh cold start per test."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_KEY_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI", management_api.endpoint)
    import app

    app.broadcaster.cache_clear()
    yield app
    app.broadcaster.cache_clear()


@pytest.fixture
def gateway(app_module, management_api) -> GatewayDriver:
    return GatewayDriver(app_module, management_api)


@pytest.fixture
def ssm_parameter_store(monkeypatch):
    """SSM Parameter Store holding prod's HS256 secret; boto3 reaches it through AWS_ENDPOINT_URL_SSM."""
    from tests.support.identity_provider import SECRET
    from tests.support.ssm_parameter_store import ParameterStore

    with ParameterStore({"/ws-broadcast/prod/jwt-secret": SECRET}) as store:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", store.endpoint)
        yield store
