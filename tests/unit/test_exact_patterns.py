"""Every identity, id and header check is exact: a value with a final "\\n" is refused.

In Python ``re``, ``$`` also matches before a final newline, so ``PATTERN.match("x\\n")``
passed a ``^...$`` check. Each class of validator is tried with a value it accepts and
the same value with "\\n" after it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.api.admin_query_schemas import WhatCanQuery
from app.api.pipeline import Target
from app.api.problems import UNDECLARED_KEY, _public_error
from app.authn.base import Message
from app.authn.verifier import SignatureVerifier
from app.authz.fields import FieldError, check_action, engagement_of
from app.authz.source import ENGAGEMENT, NAME, _field_problem
from app.authz.targets import RouteTemplates, TargetRefused
from app.cli.policy_explain import _identity as cli_identity
from app.core.config import RedisSettings, Settings
from app.core.errors import AuthenticationFailed, BadRequest
from app.domain.identity import GROUP_PATTERN, SUBJECT_PATTERN, parse_groups
from app.downstream.refusals import client_error
from app.edge.correlation import incoming_request_id
from app.workflows.idempotency import KEY_PATTERN, require_key

APP = Path(__file__).resolve().parents[2] / "app"


def _exact(pattern: re.Pattern[str]) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


def _signed_identity(subject: str, groups: str | None = None) -> Message:
    headers = {"x-auth-subject": [subject]}
    if groups is not None:
        headers["x-auth-groups"] = [groups]
    return Message("GET", "/", headers=headers)


@given(_exact(SUBJECT_PATTERN))
def test_a_subject_with_a_final_newline_is_malformed(subject: str) -> None:
    assert SignatureVerifier._identity(_signed_identity(subject), "k").subject == subject
    with pytest.raises(AuthenticationFailed):
        SignatureVerifier._identity(_signed_identity(subject + "\n"), "k")


@given(_exact(SUBJECT_PATTERN), _exact(GROUP_PATTERN))
def test_the_cli_refuses_a_subject_with_a_final_newline(subject: str, group: str) -> None:
    assert cli_identity(subject, group) == (group,)
    with pytest.raises(FieldError):
        cli_identity(subject + "\n", group)
    # A group list is split at commas and each name trimmed: the "\n" never stays on it.
    assert cli_identity(subject, group + "\n") == (group,)
    assert parse_groups(group + "\n") == (group,)


@given(_exact(ENGAGEMENT))
def test_an_engagement_id_with_a_final_newline_is_malformed(engagement: str) -> None:
    bad = engagement + "\n"
    query = {"query": "what_can", "subject": "alice"}
    assert WhatCanQuery.model_validate({**query, "engagement": engagement}).engagement == engagement
    with pytest.raises(ValidationError):
        WhatCanQuery.model_validate({**query, "engagement": bad})
    with pytest.raises(FieldError):
        engagement_of(f"/v1/engagements/{bad}")
    assert Target(engagement, "/", "GET").engagement_key == engagement
    assert Target(bad, "/", "GET").engagement_key is None


@given(_exact(NAME))
def test_a_policy_line_with_a_name_ending_in_a_newline_is_not_linted_clean(name: str) -> None:
    """Lines split at "\\n" keep one out of a file; the token check holds on its own."""
    assert _field_problem("g", (name, "analyst", "acme-2026")) is None
    assert _field_problem("g", (name + "\n", "analyst", "acme-2026")) is not None
    assert _field_problem("g3", ("acme-2026\n", "closed")) is not None


@given(_exact(KEY_PATTERN))
def test_a_request_id_or_idempotency_key_with_a_final_newline_is_refused(key: str) -> None:
    scope: dict[str, Any] = {"headers": [(b"x-request-id", key.encode())]}
    assert incoming_request_id(scope) == key
    scope = {"headers": [(b"x-request-id", (key + "\n").encode())]}
    assert incoming_request_id(scope) is None
    assert require_key(key) == key
    with pytest.raises(BadRequest):
        require_key(key + "\n")


def test_methods_actions_and_kept_header_values_with_a_final_newline_are_refused() -> None:
    templates = RouteTemplates(["/v1/engagements/{engagement_id}/findings"])
    assert templates.resolve("GET", "/v1/engagements/acme-2026/findings").action == "GET"
    with pytest.raises(TargetRefused, match="method"):
        templates.resolve("GET\n", "/v1/engagements/acme-2026/findings")
    assert check_action("read") == "read"
    with pytest.raises(FieldError):
        check_action("read\n")
    for value, kept in (("5", True), ("5\n", False)):
        answer = httpx.Response(429, headers={"retry-after": "0"})
        answer.headers["retry-after"] = value  # as if a transport passed it through
        error = client_error("findings", answer)
        assert error is not None
        assert ("retry-after" in error.headers) is kept


def test_an_undeclared_key_with_a_final_newline_is_not_echoed() -> None:
    for key, shown in (("colour", "colour"), ("colour\n", UNDECLARED_KEY)):
        error = _public_error({"type": "extra_forbidden", "loc": ("body", key), "msg": "x"})
        assert error["loc"][-1] == shown


FINDINGS = {"findings": {"url": "http://127.0.0.1:9"}}


def _passthrough(header: str) -> dict[str, Any]:
    route = {"path": "/v1/x", "service": "findings", "upstream_path": "/x"}
    return {
        "services": FINDINGS,
        "orchestration": {"passthrough": [route | {"forward_headers": [header]}]},
    }


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ({"services": FINDINGS}, {"services": {"findings\n": FINDINGS["findings"]}}),
        (_passthrough("x-trace"), _passthrough("x-trace\n")),
        (
            {"signing": {"keys": [{"id": "k1", "secret_env": "X"}]}},
            {"signing": {"keys": [{"id": "k1\n", "secret_env": "X"}]}},
        ),
        ({"signing": {"label": "sig"}}, {"signing": {"label": "sig\n"}}),
        (
            {"redis": {"mode": "sentinel", "nodes": ["r:26379"], "service_name": "m"}},
            {"redis": {"mode": "sentinel", "nodes": ["r:26379"], "service_name": "m\n"}},
        ),
    ],
)
def test_configuration_values_with_a_final_newline_are_refused(
    good: dict[str, Any], bad: dict[str, Any]
) -> None:
    Settings(**good)
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_a_redis_node_with_a_final_newline_is_refused() -> None:
    assert RedisSettings(mode="sentinel", nodes=("redis:26379",), service_name="m")
    with pytest.raises(ValidationError, match="host:port"):
        RedisSettings(mode="sentinel", nodes=("redis:26379\n",), service_name="m")


def test_no_check_in_the_app_uses_match_with_a_dollar_end() -> None:
    """``fullmatch`` (or ``\\Z``) everywhere but the two places that must not: keyMatch2
    stays Casbin's own regex, and the Link tokenizer scans from a position."""
    found = {
        f"{path.relative_to(APP)}:{number}"
        for path in APP.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"[A-Za-z_\]]\.match\(", line) and "string.match" not in line
    }
    assert {entry.rsplit(":", 1)[0] for entry in found} == {
        "authz/compiled.py",
        "workflows/passthrough.py",
    }, sorted(found)
