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

from tests.conftest import LiveServer
from tests.integration.schema_stack import Signed, stubbed_gateway

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 12  # per operation and generation mode: about 40 s for the whole schema


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveServer]:
    """Three stubs and a gateway with the documented pass-through routes, for the module."""
    with stubbed_gateway() as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(gateway: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as signed:
        signed.auth = Signed()
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
