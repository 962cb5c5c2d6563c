"""The root of every refusal the service answers: each kind says once what its client is told.

A refusal's class carries its ``status`` (what the handler returns, and a refused handshake's HTTP
status) and, when a reply or a response body names it, its ``code`` (one of the wire format's error
codes, ``chalicelib.envelope``); each refusal carries the ``text`` its client reads. The use cases
answer any refusal the same way, whether it ends a handshake, earns an error reply or is a backend
publish's response, so a kind of refusal reads the same everywhere.

The refusals themselves live where they are raised (``auth``, ``envelope``, ``registry``).
"""

from __future__ import annotations

from http import HTTPStatus


class ServiceError(Exception):
    """A refusal with its ``status``, ``code`` and ``text``; ``str()`` of it may say more, for the log."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    code: str | None = None
    text: str = ""
