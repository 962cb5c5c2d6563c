import pytest

from tests.support.gateway_driver import GatewayDriver, app_on


@pytest.fixture
def app_module(monkeypatch, redis_server, management_api):
    yield from app_on(monkeypatch, redis_server.url, management_api)


@pytest.fixture
def jwt_stage(monkeypatch):
    """A stage that verifies HS256 tokens (testing.identity_provider's secret) and allows one origin."""
    from testing.identity_provider import AUDIENCE, ISSUER, SECRET

    monkeypatch.setenv("AUTH_MODE", "jwt")
    monkeypatch.setenv("AUTH_JWT_SECRET", SECRET)
    monkeypatch.setenv("AUTH_ISSUER", ISSUER)
    monkeypatch.setenv("AUTH_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://app.example.com")


@pytest.fixture
def gateway(app_module, management_api) -> GatewayDriver:
    return GatewayDriver(app_module, management_api)


@pytest.fixture
def ssm_parameter_store(monkeypatch):
    """SSM Parameter Store holding prod's HS256 secret; boto3 reaches it through AWS_ENDPOINT_URL_SSM."""
    from testing.identity_provider import SECRET
    from tests.support.ssm_parameter_store import ParameterStore

    with ParameterStore({"/ws-broadcast/prod/jwt-secret": SECRET}) as store:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", store.endpoint)
        yield store
