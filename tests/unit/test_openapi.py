"""The OpenAPI document says what the gateway does: signing, parameters, statuses, problems."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.api.admin_query_schemas import WhoCanQuery
from app.main import create_app
from tests.conftest import make_settings
from tests.integration.test_passthrough import ROUTES

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
CONTENT = "/v1/engagements/{engagement_id}/reports/{report_id}/content"
EVIDENCE = "/v1/engagements/{engagement_id}/evidence"
CLOSE = "/v1/engagements/{engagement_id}/close"


@pytest.fixture
def schema(test_key_env: str) -> dict[str, Any]:
    services = {name: "http://127.0.0.1:9" for name in ("findings", "reports", "engagements")}
    settings = make_settings(
        services, orchestration={"passthrough": ROUTES}, edge={"max_body_bytes": 32 * 1024 * 1024}
    )
    document: dict[str, Any] = create_app(settings).openapi()
    return document


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def test_pass_through_operations_declare_their_path_parameters(schema: dict[str, Any]) -> None:
    """Issue 12: ``Path parameters 'engagement_id', 'report_id' are not defined``."""
    content = schema["paths"][CONTENT]["get"]
    names = {p["name"] for p in content["parameters"] if p["in"] == "path"}
    assert names == {"engagement_id", "report_id"}
    evidence = schema["paths"][EVIDENCE]["post"]
    assert [p["name"] for p in evidence["parameters"]] == ["engagement_id"]
    assert evidence["parameters"][0]["schema"]["pattern"] == "^[a-z0-9][a-z0-9-]{1,62}$"


def test_the_evidence_upload_lists_201_and_takes_a_body(schema: dict[str, Any]) -> None:
    evidence = schema["paths"][EVIDENCE]["post"]
    assert "201" in evidence["responses"]
    assert "application/octet-stream" in evidence["requestBody"]["content"]
    assert "413" in evidence["responses"]
    assert "requestBody" not in schema["paths"][CONTENT]["get"]


def test_close_requires_an_idempotency_key(schema: dict[str, Any]) -> None:
    close = schema["paths"][CLOSE]["post"]
    keys = [p for p in close["parameters"] if p["name"].lower() == "idempotency-key"]
    assert len(keys) == 1
    assert keys[0]["in"] == "header"
    assert keys[0]["required"] is True


def test_signing_is_a_security_requirement_described_with_its_profile(
    schema: dict[str, Any],
) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert {s["name"] for s in schemes.values()} == {
        "Signature",
        "Signature-Input",
        "X-Auth-Subject",
    }
    assert all(s["type"] == "apiKey" and s["in"] == "header" for s in schemes.values())
    assert schema["security"] == [{name: [] for name in schemes}]
    description = schema["info"]["description"]
    assert "RFC 9421" in description
    assert "(/docs/signing.md)" in description
    assert "Content-Digest" in description


def test_only_probes_and_metrics_are_public(schema: dict[str, Any]) -> None:
    public = {path for path, _, op in operations(schema) if op.get("security") == []}
    assert public == {"/healthz", "/readyz", "/metrics"}


def test_every_error_is_a_problem(schema: dict[str, Any]) -> None:
    for path, method, operation in operations(schema):
        for status, response in operation["responses"].items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):
                continue
            assert response["content"] == {"application/problem+json": {"schema": PROBLEM_REF}}, (
                f"{method.upper()} {path} {status}"
            )
        if operation.get("security") != []:
            assert {"400", "401", "403", "404", "429", "503"} <= set(operation["responses"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_every_path_template_parameter_is_declared(schema: dict[str, Any]) -> None:
    """OpenAPI 3.1: a templated path's parameters must be declared (the Envoy decision
    route's {original} was not, and schemathesis refused the whole document)."""
    import re

    for path, method, operation in operations(schema):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert set(re.findall(r"\{([^}]+)\}", path)) == declared, (method, path)


@pytest.mark.parametrize(
    ("path", "carriers"),
    [
        ("/v1/decisions", {"X-Original-Method", "X-Original-URI"}),
        ("/v1/decisions/traefik", {"X-Forwarded-Method", "X-Forwarded-Uri"}),
        ("/v1/decisions/envoy/{original}", {"original"}),
    ],
)
def test_the_decision_operations_say_where_the_original_request_is(
    schema: dict[str, Any], path: str, carriers: set[str]
) -> None:
    operation = schema["paths"][path]["get"]
    assert {p["name"] for p in operation["parameters"]} == carriers
    assert all(p["required"] for p in operation["parameters"])
    answer = operation["responses"]["200"]
    assert {"x-auth-subject", "x-gateway-decision-id"} <= set(answer["headers"])
    assert answer["content"]["application/json"]["schema"]  # FastAPI's model kept
    assert "PUT" in operation["x-methods"]


def test_the_answers_declare_the_headers_the_gateway_sends(schema: dict[str, Any]) -> None:
    public = {("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get")}
    for path, method, operation in operations(schema):
        for status, response in operation["responses"].items():
            headers = response.get("headers", {})
            assert "X-Request-ID" in headers, (method, path, status)
            if (path, method) not in public and status.startswith("2"):
                assert {"RateLimit", "RateLimit-Policy"} <= set(headers), (method, path)
            if status in ("429", "503"):
                assert "Retry-After" in headers, (method, path, status)


def test_a_keyed_success_declares_idempotent_replayed(schema: dict[str, Any]) -> None:
    """The create and the close answer ``Idempotent-Replayed`` (findings-create.md,
    engagements-close.md); a client generated from the schema must see it declared."""
    keyed = {("/v1/engagements/{engagement_id}/findings", "post", "201"), (CLOSE, "post", "200")}
    declared = set()
    for path, method, operation in operations(schema):
        for status, response in operation["responses"].items():
            header = response["headers"].get("Idempotent-Replayed")
            if header is not None:
                declared.add((path, method, status))
                assert header["schema"] == {"type": "string", "enum": ["true", "false"]}
                assert "$ref" in str(response["content"]["application/json"]["schema"])
    assert declared == keyed


def test_a_conflict_that_ends_by_itself_declares_its_retry_after(schema: dict[str, Any]) -> None:
    """A 409 "in progress" (an Idempotency-Key's run, an engagement's close or reopen) is
    sent with Retry-After; those operations declare it, the others' 409s do not."""
    retrying = {
        (CLOSE, "post"),
        ("/v1/engagements/{engagement_id}/findings", "post"),
        ("/admin/engagements/{engagement}/reopen", "post"),
    }
    declared = set()
    for path, method, operation in operations(schema):
        conflict = operation["responses"].get("409")
        if conflict is not None and "Retry-After" in conflict["headers"]:
            declared.add((path, method))
            assert conflict["headers"]["Retry-After"]["schema"]["minimum"] == 1
            assert "Retry-After" in conflict["description"], (method, path)
            assert conflict["content"]["application/problem+json"]["schema"] == PROBLEM_REF
    assert declared == retrying


def test_query_fields_show_the_rules_they_are_checked_by(schema: dict[str, Any]) -> None:
    """A client generated from the schema sends what the checks take (schemathesis ST202)."""
    query = schema["components"]["schemas"]["WhoCanQuery"]["properties"]
    assert query["path"]["maxLength"] == 4096  # the edge's limit: 8192 was declared
    assert query["action"]["pattern"].startswith("^(GET|HEAD|POST")
    engagement = query["engagement"]["anyOf"][0]
    assert engagement["pattern"] == r"^(\*|[a-z0-9][a-z0-9-]{1,62})$"


def test_a_decision_path_field_shows_the_pattern_of_what_it_takes(schema: dict[str, Any]) -> None:
    """schemathesis ST202: ``"path": "000..."`` was schema-valid (only a length) but a 422."""
    for model in ("WhoCanQuery", "ExplainRequest"):
        field = schema["components"]["schemas"][model]["properties"]["path"]
        pattern = re.compile(field["pattern"])
        assert not pattern.search("000")
        assert pattern.search("/v1/engagements/acme-2026/findings?page=2")


# Paths a client might send: the edge's characters, escapes (bad ones too), and what it refuses.
_PATH_CHARS = st.sampled_from([*"/aZ09-._~!$&'()*+,=:@%", "%2e", "%2F", "%zz", "?", "#", " ", "é"])


@given(st.lists(_PATH_CHARS, max_size=12).map("".join))
def test_every_path_the_decision_fields_take_matches_their_pattern(path: str) -> None:
    """The pattern never refuses what the check takes (a client would not send it)."""
    try:
        WhoCanQuery(query="who_can", path=path, action="GET")
    except ValidationError:
        return
    pattern = WhoCanQuery.model_json_schema()["properties"]["path"]["pattern"]
    assert re.search(pattern, path), path


def test_the_description_names_every_component_the_profile_requires(
    schema: dict[str, Any],
) -> None:
    """The idempotency-key, refused unsigned on a keyed create or close, was not named."""
    description = schema["info"]["description"]
    required = ("@method", "@path", "@query", "content-digest", "x-auth-subject")
    for component in (*required, "x-auth-groups", "idempotency-key"):
        assert f'"{component}"' in description, component
