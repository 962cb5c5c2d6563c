import shutil

import pytest

from tests.e2e.localgw_harness import GatewayProcess


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """The fixture app behind the gateway with API Gateway's default limits, shared by a module."""
    gw = GatewayProcess(tmp_path=tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()


@pytest.fixture
def start_gateway(tmp_path):
    """Start a dedicated gateway (for shrunk limits or shutdown tests); stopped after the test."""
    started = []

    def start(*args, **kwargs):
        gw = GatewayProcess(*args, tmp_path=tmp_path, **kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def wscat_available():
    """wscat comes from `make test` (npm ci); missing means a broken set-up: fail, never skip."""
    from tests.e2e.localgw_harness import WSCAT

    assert WSCAT.exists(), (
        "node_modules/.bin/wscat is missing: run `make test` (scripts/bootstrap installs it)"
    )
    assert shutil.which("node"), "node is missing: install Node.js 20+ (scripts/bootstrap says how)"
