"""Property-based API test: schemathesis against a running gateway's ``/openapi.json``.

Every operation of the schema (pass-through routes included) is exercised with
generated requests, valid and invalid, each signed like a trusted proxy would
(``/admin`` as the security admin, the rest as the records officer, whose global
roles reach every engagement, so requests get past the policy to the services).
Checked: no 5xx, and status codes, content types and bodies conform to the schema.
Bounded: a fixed number of examples per operation, no shrinking database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.authn.base import Message
from app.authn.signer import sign_headers
from app.main import create_app
from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import TEST_KEY_ENV, TEST_KEY_ID, TEST_SECRET, LiveServer, make_settings
from tests.integration.test_passthrough import ROUTES

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 12  # per operation and generation mode: about 40 s for the whole schema


class SignedRequests(requests.auth.AuthBase):
    """Sign each prepared request (as sent: path, query, body) with the test key."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        path, _, query = (request.path_url or "/").partition("?")
        subject = "sam" if path.startswith("/admin") else "rita"
        request.headers["X-Auth-Subject"] = subject
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert isinstance(body, bytes)
        fields = {name.lower(): [value] for name, value in request.headers.items()}
        message = Message(str(request.method), path, query, "http", "", fields)
        request.headers.update(sign_headers(message, body, key_id=TEST_KEY_ID, secret=TEST_SECRET))
        return request


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveServer]:
    """Three stubs and a gateway with the documented pass-through routes, for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
        stubs = {name: LiveServer(create_stub_app(name)).start() for name in STUB_NAMES}
        settings_ = make_settings(
            {name: stub.url for name, stub in stubs.items()},
            orchestration={"passthrough": ROUTES},
            edge={"max_body_bytes": 32 * 1024 * 1024},  # the routes' own limits fit under it
        )
        server = LiveServer(create_app(settings_)).start()
        try:
            yield server
        finally:
            server.stop()
            for stub in stubs.values():
                stub.stop()


@pytest.fixture(scope="module")
def api_schema(gateway: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as signed:
        signed.auth = SignedRequests()
        yield signed


def exercise(case_strategy: Any, url: str, session: requests.Session) -> None:
    """Run generated cases of one operation and mode; the first failure (shrunk) raises."""

    @given(case=case_strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, session=session, checks=CHECKS, timeout=30)

    run()


def test_every_operation_conforms_to_the_schema(
    api_schema: Any, gateway: LiveServer, session: requests.Session
) -> None:
    """Each operation, valid and invalid requests: failures are collected, then reported."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12, "the schema lost operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                exercise(operation.as_strategy(generation_mode=mode), gateway.url, session)
            except Unsatisfiable:
                # No invalid request exists for an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, FailureGroup) as exc:  # report every operation
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
