"""What the schema promises, to an allowed and a denied caller (hypothesis, ``/openapi.json``).

``test_api_schema.py`` runs schemathesis's conformance checks as callers the policy
allows. This adds what those checks cannot know: a caller the policy denies gets
its refusal before anything of the request is parsed (never a 2xx, 413 from a
route's limit, 415 or 422); every error is a ``Problem`` whose ``corr_id`` is the
response's ``X-Request-ID`` and whose ``status`` is the response's; a signed
route's success carries ``RateLimit`` and ``RateLimit-Policy``; and the decision
endpoints are asked with their original-request headers signed, so generated
requests reach the decision instead of stopping at a 401.
Bounded: a few examples per operation, mode and caller (about 400 requests, ~10 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests.conftest import LiveServer
from tests.integration.schema_stack import Signed, stubbed_gateway

pytestmark = pytest.mark.integration

EXAMPLES = 5  # per operation, generation mode and caller
PUBLIC = {"/healthz", "/readyz", "/metrics"}
DENIED = "zed"  # holds no role anywhere
# Refused before the body or parameters are read: what a denied caller may see (401:
# a decision request without its original headers, which the signature must cover).
DENIED_STATUSES = {400, 401, 403, 404, 405, 429}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveServer]:
    """Stubs and a gateway with pass-through and decision routes and a generous rate limit."""
    generous = {"limit": 1_000_000, "window_seconds": 1}
    decided = ["/v1/engagements/{engagement_id}/findings", "/admin/{rest:path}"]
    with stubbed_gateway(
        authorizer={"routes": decided},
        ops={"rate_limit": {"subject": generous, "engagement": generous}},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def raw_schema(gateway: LiveServer) -> dict[str, Any]:
    schema: dict[str, Any] = requests.get(f"{gateway.url}/openapi.json", timeout=10).json()
    return schema


def check_promises(schema: dict[str, Any], path: str, response: Any, denied: bool) -> None:
    """The gateway's own promises (errors.md, openapi.md), beyond schemathesis's checks."""
    status = response.status_code
    # schemathesis's response: each header name with its list of values.
    headers = {name.lower(): values[0] for name, values in response.headers.items()}
    corr_id = headers.get("x-request-id")
    assert corr_id, f"{path} {status}: no X-Request-ID"
    if denied and path not in PUBLIC:
        assert status in DENIED_STATUSES, f"{path}: a denied caller got {status}"
    if status >= 400:
        assert headers.get("content-type", "").startswith("application/problem+json"), path
        body = response.json()
        jsonschema.validate(body, schema["components"]["schemas"]["Problem"])
        assert (body["status"], body["corr_id"]) == (status, corr_id), (path, body)
        if status == 429:
            assert int(headers["retry-after"]) >= 1, path
    if 200 <= status < 300 and path not in PUBLIC:
        assert {"ratelimit", "ratelimit-policy"} <= set(headers), f"{path}: no RateLimit"


def exercise(strategy: Any, schema: dict[str, Any], url: str, caller: str | None) -> None:
    """Generated cases of one operation, mode and caller; the first failure raises."""
    with requests.Session() as session:
        session.auth = Signed(caller, cover_original=True)

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # report the first failure, unshrunk
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, session=session, timeout=10)
            case.validate_response(response, checks=CHECKS)
            check_promises(schema, case.operation.path, response, caller == DENIED)

        run()


@pytest.mark.parametrize("caller", [None, DENIED], ids=["allowed", "denied"])
def test_every_operation_keeps_its_promises(
    raw_schema: dict[str, Any], gateway: LiveServer, caller: str | None
) -> None:
    """Each operation, valid and invalid requests: failures are collected, then reported."""
    failures: list[str] = []
    operations = [r.ok() for r in schemathesis.openapi.from_dict(raw_schema).get_all_operations()]
    assert len(operations) >= 12, "the schema lost operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            try:
                exercise(strategy, raw_schema, gateway.url, caller)
            except Unsatisfiable:
                # No invalid request exists for an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # report every operation
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
