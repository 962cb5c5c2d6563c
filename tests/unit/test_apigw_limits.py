"""The app's copies of API Gateway's limits (chalicelib/ imports nothing outside itself) equal the fakes'."""

from chalicelib import envelope, settings
from testing import apigw


def test_the_app_and_the_fakes_agree_on_api_gateways_limits():
    assert envelope.MAX_MESSAGE_BYTES == apigw.API_GATEWAY_MAX_MESSAGE_BYTES
    assert settings.API_GATEWAY_MAX_CONNECTION_SECONDS == apigw.API_GATEWAY_MAX_CONNECTION_SECONDS
    assert settings.API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS == apigw.API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS
