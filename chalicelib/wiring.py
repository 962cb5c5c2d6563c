"""The service built from its settings: the one place that knows which unit gets which setting.

``app.py`` calls ``service`` once per cold start; the use cases (``broadcast.py``) and the units
receive what they need and never read settings themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import boto3

from chalicelib.auth import Gatekeeper, TokenVerifier
from chalicelib.broadcast import Broadcaster
from chalicelib.fanout import Fanout
from chalicelib.jobs import JobQueue
from chalicelib.management_api import ManagementApis
from chalicelib.registry import ConnectionRegistry
from chalicelib.settings import AuthMode, Settings
from chalicelib.worker import Worker


class Service(NamedTuple):
    """What a container keeps for its life: its settings and the use cases of its functions."""

    settings: Settings
    broadcaster: Broadcaster
    worker: Worker


def service(settings: Settings, session: boto3.session.Session) -> Service:
    """The use cases wired to Redis, the Management API, the fan-out, the gatekeeper and the queue,
    which the WebSocket handlers, ``POST /publish`` and the queue's worker share."""
    registry = ConnectionRegistry.from_settings(settings, session)
    management_apis = ManagementApis(settings, session)
    fanout = Fanout(settings.fanout_workers)
    job_queue = None
    if settings.fanout_queue_url:
        job_queue = JobQueue(
            settings.fanout_queue_url, lambda: session.client("sqs", region_name=settings.aws_region)
        )
    broadcaster = Broadcaster(
        registry,
        management_apis,
        fanout,
        Gatekeeper(_verifier(settings, session), settings.allowed_origins),
        publish_deadline_seconds=settings.publish_deadline_seconds,
        websocket_api=settings.websocket_api,
        job_queue=job_queue,
    )
    return Service(settings, broadcaster, Worker(registry, management_apis, fanout, job_queue))


def _verifier(settings: Settings, session: boto3.session.Session) -> TokenVerifier | None:
    """The JWT verifier of a stage that checks tokens, built on the first token it sees: only
    ``$connect`` verifies tokens, so only its cold start imports the verification modules."""
    if settings.auth.mode == AuthMode.NONE:
        return None
    return _FirstUseVerifier(settings, session)


class _FirstUseVerifier:
    def __init__(self, settings: Settings, session: boto3.session.Session) -> None:
        self._settings = settings
        self._session = session

    @functools.cached_property
    def _verifier(self) -> TokenVerifier:
        from chalicelib.tokens import verifier_from_settings

        return verifier_from_settings(self._settings.auth, self._session)

    def verify(self, token: str) -> Mapping[str, Any]:
        return self._verifier.verify(token)
