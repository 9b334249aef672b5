"""What the schema-driven tests share: a signing ``requests`` auth and a stubbed gateway.

``test_api_schema.py`` (schemathesis's conformance checks, as allowed callers) and
``test_openapi_contract.py`` (allowed and denied callers) run against the same stack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from app.authn.base import Message
from app.authn.signer import sign_headers
from app.main import create_app
from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import TEST_KEY_ENV, TEST_KEY_ID, TEST_SECRET, LiveServer, make_settings
from tests.integration.test_passthrough import ROUTES

# The headers that carry a decision request's original: signed when sent (decisions.md).
ORIGINAL_HEADERS = ("x-original-method", "x-original-uri", "x-forwarded-method", "x-forwarded-uri")


class Signed(requests.auth.AuthBase):
    """Sign each prepared request as a trusted proxy would (path, query, body as sent).

    As ``subject``, else by path: ``/admin`` as the security admin, the rest as the
    records officer, whose global roles reach every engagement. ``cover_original``
    also covers a decision request's original-request headers when present.
    """

    def __init__(self, subject: str | None = None, cover_original: bool = False) -> None:
        self.subject = subject
        self.cover_original = cover_original

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        path, _, query = (request.path_url or "/").partition("?")
        subject = self.subject or ("sam" if path.startswith("/admin") else "rita")
        request.headers["X-Auth-Subject"] = subject
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert isinstance(body, bytes)
        fields = {name.lower(): [value] for name, value in request.headers.items()}
        cover = [n for n in ORIGINAL_HEADERS if n in fields] if self.cover_original else []
        message = Message(str(request.method), path, query, "http", "", fields)
        signed = sign_headers(message, body, key_id=TEST_KEY_ID, secret=TEST_SECRET, cover=cover)
        request.headers.update(signed)
        return request


@contextlib.contextmanager
def stubbed_gateway(**settings: Any) -> Iterator[LiveServer]:
    """The three stubs and a gateway with the documented pass-through routes (and
    ``settings`` beside them), stopped on exit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
        stubs = {name: LiveServer(create_stub_app(name)).start() for name in STUB_NAMES}
        settings_ = make_settings(
            {name: stub.url for name, stub in stubs.items()},
            orchestration={"passthrough": ROUTES},
            edge={"max_body_bytes": 32 * 1024 * 1024},  # the routes' own limits fit under it
            **settings,
        )
        server = LiveServer(create_app(settings_)).start()
        try:
            yield server
        finally:
            server.stop()
            for stub in stubs.values():
                stub.stop()
