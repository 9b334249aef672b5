"""A finding created with an Idempotency-Key is created once, against a real gateway and stub.

The same key and body again gets the first finding (201, replayed) without a second
call; another body is a 422; keys are per caller; a failure is not remembered; the
service gets a key of its own, derived from the caller and the key, so a create it
applied before its answer was lost is not applied twice when the caller retries.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.domain.findings import FindingCreate
from app.workflows.findings import service_key
from app.workflows.passthrough import forwarded_key
from tests.conftest import signer
from tests.integration.conftest import Stack
from tests.integration.orchestration_stack import StackBuilder
from tests.integration.test_gateway_e2e import assert_problem

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
UPSTREAM = "/engagements/acme-2026/findings"
FINDING = {"title": "Weak TLS ciphers", "severity": "low"}
# The fingerprint the gateway takes of FINDING (its FindingCreate's JSON).
BODY = hashlib.sha256(FindingCreate.model_validate(FINDING).model_dump_json().encode()).hexdigest()


def create(
    stack: Stack, body: dict[str, Any], key: str | None, subject: str = "alice"
) -> httpx.Response:
    headers = {} if key is None else {"idempotency-key": key}
    with httpx.Client(base_url=stack.url, auth=signer(subject), timeout=15) as client:
        return client.post(FINDINGS, json=body, headers=headers)


def creates_seen(stack: Stack) -> list[dict[str, Any]]:
    """The creates the findings stub received (its real ``/_seen`` endpoint)."""
    seen = httpx.get(stack.stubs["findings"].url + "/_seen", timeout=5).json()
    return [r for r in seen if r["method"] == "POST" and r["path"] == UPSTREAM]


def listed(stack: Stack) -> list[dict[str, Any]]:
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=15) as client:
        items: list[dict[str, Any]] = client.get(FINDINGS).json()["items"]
    return items


def test_the_same_key_and_body_create_one_finding(stack: Stack) -> None:
    before = len(listed(stack))
    first = create(stack, FINDING, "create-tls-0001")
    assert first.status_code == 201, first.text
    assert first.headers["idempotent-replayed"] == "false"
    again = create(stack, FINDING, "create-tls-0001")
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len(creates_seen(stack)) == 1  # the replay called no service
    assert len(listed(stack)) == before + 1
    seen = creates_seen(stack)[0]["headers"]
    assert seen["idempotency-key"] == service_key("alice", "acme-2026", "create-tls-0001", BODY)


def test_the_same_key_with_another_body_is_a_422(stack: Stack) -> None:
    assert create(stack, FINDING, "create-tls-0002").status_code == 201
    other = create(stack, {**FINDING, "severity": "high"}, "create-tls-0002")
    assert_problem(other, 422, "idempotency_key_reused")
    assert len(creates_seen(stack)) == 1


def test_keys_are_per_caller(stack: Stack) -> None:
    """rita's key equal to alice's is her own: two findings, and two service keys."""
    alice = create(stack, FINDING, "create-tls-0003", "alice")
    rita = create(stack, FINDING, "create-tls-0003", "rita")
    assert (alice.status_code, rita.status_code) == (201, 201), rita.text
    assert alice.json()["id"] != rita.json()["id"]
    assert rita.json()["created_by"] == "rita"
    assert rita.headers["idempotent-replayed"] == "false"
    keys = {seen["headers"]["idempotency-key"] for seen in creates_seen(stack)}
    assert keys == {
        service_key("alice", "acme-2026", "create-tls-0003", BODY),
        service_key("rita", "acme-2026", "create-tls-0003", BODY),
    }


def test_without_a_key_each_post_is_a_finding(stack: Stack) -> None:
    first, second = create(stack, FINDING, None), create(stack, FINDING, None)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers
    assert all("idempotency-key" not in seen["headers"] for seen in creates_seen(stack))


@pytest.mark.parametrize("key", ["short", "has space in it", "x" * 129, "-leading-dash"])
def test_a_malformed_key_is_a_400_and_creates_nothing(stack: Stack, key: str) -> None:
    response = create(stack, FINDING, key)
    assert_problem(response, 400, "bad_request")
    assert "Idempotency-Key" in response.json()["detail"]
    assert creates_seen(stack) == []


def test_a_refused_create_is_not_remembered(stack: Stack) -> None:
    """Frozen findings (409): the key is free again, and the retry after the unfreeze creates."""
    base = stack.stubs["findings"].url + "/engagements/acme-2026/findings"
    assert httpx.post(base + "/freeze", json={}, timeout=5).status_code == 200
    assert_problem(create(stack, FINDING, "create-tls-0005"), 409, "conflict")
    assert httpx.post(base + "/unfreeze", json={}, timeout=5).status_code == 200
    retried = create(stack, FINDING, "create-tls-0005")
    assert retried.status_code == 201, retried.text
    assert retried.headers["idempotent-replayed"] == "false"


def applied_unanswered(stack: Stack, key: str) -> httpx.Response:
    """The create the service applied for alice's ``key`` and FINDING, as if the gateway
    had sent it and lost the answer (the gateway forgets a failed run)."""
    applied = httpx.post(
        stack.stubs["findings"].url + UPSTREAM,
        json={**FINDING, "created_by": "alice"},
        headers={"idempotency-key": service_key("alice", "acme-2026", key, BODY)},
        timeout=5,
    )
    assert applied.status_code == 201
    return applied


def test_a_create_the_service_applied_before_its_answer_was_lost_is_not_applied_twice(
    stack: Stack,
) -> None:
    """The service applied a create whose answer never reached the gateway (the gateway
    forgot the failed run): the caller's retry carries the same service key, so the
    service answers with the finding it made instead of a second one."""
    applied = applied_unanswered(stack, "create-tls-0006")
    before = len(listed(stack))
    retried = create(stack, FINDING, "create-tls-0006")
    assert retried.status_code == 201, retried.text
    assert retried.json()["id"] == applied.json()["id"]
    assert len(listed(stack)) == before


def test_the_same_key_with_another_body_after_a_lost_answer_is_not_the_first_finding(
    stack: Stack,
) -> None:
    """The first create's answer was lost (the gateway forgot the failed run) but the
    service applied it; the caller then sends the key with another body. The service
    key carries the body, so the service makes B rather than answering with A."""
    applied = applied_unanswered(stack, "create-tls-0007")
    other = {"title": "Another finding", "severity": "critical"}
    created = create(stack, other, "create-tls-0007")
    assert created.status_code == 201, created.text
    assert created.json()["id"] != applied.json()["id"]
    assert created.json()["title"] == "Another finding"


def _signed_then_keyed(url: str, path: str, body: dict[str, Any], subject: str) -> httpx.Request:
    """Signed without an Idempotency-Key, which a hop then adds (unsigned)."""
    request = httpx.Request("POST", url + path, json=body)
    signed = next(signer(subject).auth_flow(request))
    signed.headers["idempotency-key"] = "added-after-signing-2"
    return signed


@pytest.mark.parametrize(
    ("path", "body", "subject"),
    [
        (FINDINGS, FINDING, "alice"),
        ("/v1/engagements/acme-2026/close", {"reason": "Retest complete."}, "bob"),
    ],
    ids=["create", "close"],
)
def test_a_key_the_signature_does_not_cover_is_401_where_the_route_acts_on_it(
    stack: Stack, captured_logs: list[dict[str, Any]], path: str, body: dict[str, Any], subject: str
) -> None:
    """Anyone between the proxy and the gateway could otherwise set the key (and get a
    replay of another of the caller's results instead of a write)."""
    with httpx.Client(timeout=10) as client:
        response = client.send(_signed_then_keyed(stack.url, path, body, subject))
    assert_problem(response, 401, "unauthenticated")
    denials = [e["reason"] for e in captured_logs if e.get("stage") == "authn"]
    assert denials == ["component_missing"]
    assert creates_seen(stack) == []


def test_a_route_that_ignores_the_key_does_not_require_it_signed(stack: Stack) -> None:
    request = httpx.Request("GET", stack.url + FINDINGS)
    signed = next(signer("alice").auth_flow(request))
    signed.headers["idempotency-key"] = "added-after-signing-3"
    with httpx.Client(timeout=10) as client:
        assert client.send(signed).status_code == 200


def test_the_gateway_signs_the_key_it_sends_the_service(make_stack: StackBuilder) -> None:
    """The service deduplicates on the key: the gateway's own signature covers it, and
    the stub (which requires the gateway's signature) verifies it."""
    stack = make_stack()
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=15) as client:
        response = client.post(FINDINGS, json=FINDING, headers={"idempotency-key": "create-0008"})
    assert response.status_code == 201, response.text
    seen = next(r for r in stack.seen("findings") if r["method"] == "POST")
    assert '"idempotency-key"' in seen["headers"]["signature-input"]
    assert seen["signature"] == "valid"


def test_several_key_fields_are_a_400(stack: Stack) -> None:
    """An audit found the first field acted on while the signature covered them joined
    ("k1, k2"): a later request with k1 alone was a replay. Several fields are refused."""
    keys = [("idempotency-key", "create-tls-0009"), ("idempotency-key", "create-tls-0010")]
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=15) as client:
        response = client.post(FINDINGS, json=FINDING, headers=keys)
    body = assert_problem(response, 400, "bad_request")
    assert "Send one Idempotency-Key field" in str(body["detail"])
    assert creates_seen(stack) == []


IMPORT_ROUTE = {
    "path": "/v1/engagements/{engagement_id}/findings-import",
    "service": "findings",
    "upstream_path": "/engagements/{engagement_id}/findings",
    "methods": ["POST"],
    "policy_object": "/v1/engagements/{engagement_id}/findings",
    "forward_headers": ["Idempotency-Key"],
}


def test_a_pass_through_route_forwarding_the_key_requires_it_signed(
    make_stack: StackBuilder, captured_logs: list[dict[str, Any]]
) -> None:
    """The service deduplicates on a forwarded key and the gateway's signature vouches
    for it: an audit found an unsigned key forwarded (a replay of another finding)."""
    stack = make_stack(orchestration={"passthrough": [IMPORT_ROUTE]})
    path = "/v1/engagements/acme-2026/findings-import"
    body = {**FINDING, "created_by": "alice"}
    unsigned = _signed_then_keyed(stack.url, path, body, "alice")
    with httpx.Client(timeout=10) as client:
        assert_problem(client.send(unsigned), 401, "unauthenticated")
    assert [e["reason"] for e in captured_logs if e.get("stage") == "authn"] == [
        "component_missing"
    ]
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=15) as client:
        signed = client.post(path, json=body, headers={"idempotency-key": "import-0001"})
        plain = client.post(path, json=body)  # no key: nothing to require
    assert (signed.status_code, plain.status_code) == (201, 201), signed.text
    posts = [r for r in stack.seen("findings") if r["method"] == "POST"]
    assert posts[0]["headers"]["idempotency-key"] == forwarded_key(
        "alice", "POST", path, "import-0001"
    )
    assert posts[0]["signature"] == "valid"


def test_a_forwarded_key_is_the_callers_own_at_the_service(make_stack: StackBuilder) -> None:
    """The service deduplicates on the key it gets, and every request it gets comes from
    the gateway: an audit found the caller's key forwarded as sent, so bob, allowed on the
    route, sending alice's key got alice's finding back (and his own was never made)."""
    stack = make_stack(orchestration={"passthrough": [IMPORT_ROUTE]})
    path = "/v1/engagements/acme-2026/findings-import"
    key = {"idempotency-key": "import-0002"}
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=15) as alice:
        first = alice.post(path, json={**FINDING, "created_by": "alice"}, headers=key)
        again = alice.post(path, json={**FINDING, "created_by": "alice"}, headers=key)
    with httpx.Client(base_url=stack.url, auth=signer("bob"), timeout=15) as bob:
        other = bob.post(
            path, json={"title": "Bob's own", "severity": "high", "created_by": "bob"}, headers=key
        )
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 201)
    assert again.json() == first.json(), "alice's retry is still deduplicated"
    assert other.json()["id"] != first.json()["id"], "bob got alice's finding"
    assert (other.json()["created_by"], other.json()["title"]) == ("bob", "Bob's own")
    sent = [
        r["headers"]["idempotency-key"] for r in stack.seen("findings") if r["method"] == "POST"
    ]
    assert "import-0002" not in sent
    assert sent == [
        forwarded_key(s, "POST", path, "import-0002") for s in ("alice", "alice", "bob")
    ]


def test_a_malformed_forwarded_key_is_a_400_and_sends_nothing(make_stack: StackBuilder) -> None:
    """The service sees only the scoped key, so the gateway judges the caller's."""
    stack = make_stack(orchestration={"passthrough": [IMPORT_ROUTE]})
    path = "/v1/engagements/acme-2026/findings-import"
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=15) as client:
        response = client.post(path, json=FINDING, headers={"idempotency-key": "short"})
    assert_problem(response, 400, "bad_request")
    assert [r for r in stack.seen("findings") if r["method"] == "POST"] == []


def test_a_key_sent_again_while_its_first_create_runs_is_a_409_with_retry_after(
    make_stack: StackBuilder,
) -> None:
    """The 409 said "in progress" but not when to come back (RFC 9110 section 10.2.3)."""
    stack = make_stack()
    stack.faults("findings", hang=True, hang_max_seconds=10, methods=["POST"])
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(create, stack, FINDING, "create-tls-0409")
        for _ in range(200):  # until the stub holds the first create (it records it on arrival)
            if any(r.get("fault") == "hang" for r in stack.seen("findings")):
                break
            time.sleep(0.05)
        again = create(stack, FINDING, "create-tls-0409")
        stack.faults("findings")  # release the first create
        assert first.result().status_code == 201
    assert_problem(again, 409, "conflict")
    assert again.headers["retry-after"] == "1"
