"""Closed means closed: a close through any gateway is decided everywhere, after restarts too.

Two gateways in front of the same three stubs share one real redis-server; the
second checks for changes it was not told of only every minute, so seeing the
close within the test's wait proves the push (pub/sub) path. Then restarts (on
Redis, and in memory with reconciliation from the engagements service), the
guarded reopen route, and the findings service's 409 for frozen findings.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from app.authz.closed import MemoryEngagementState
from app.core.errors import ServiceUnavailable
from app.main import create_app
from app.stubs.server import create_stub_app
from app.workflows.engagement_lock import RedisEngagementLocks
from tests.conftest import POLICY_DIR, LiveServer, make_settings, signer
from tests.integration.conftest import Stack
from tests.integration.orchestration_stack import OrchestrationStack, StackBuilder, stack_settings
from tests.integration.test_gateway_e2e import assert_problem
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

CLOSE = "/v1/engagements/acme-2026/close"
FINDINGS = "/v1/engagements/acme-2026/findings"
REOPEN = "/admin/engagements/acme-2026/reopen"
FINDING = {"title": "Late finding", "severity": "low"}
SLOW_CHECK = {"engagement_state": {"check_interval_seconds": 60}}


def post(url: str, path: str, subject: str, body: Any, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=url, auth=signer(subject), timeout=15) as client:
        return client.post(path, json=body, headers=headers)


def get(url: str, path: str, subject: str = "alice") -> httpx.Response:
    with httpx.Client(base_url=url, auth=signer(subject), timeout=15) as client:
        return client.get(path)


def wait_for(predicate: Callable[[], bool], bound: float = 10.0) -> None:
    """Poll until ``predicate`` holds; the bound is a failure limit, not a timing claim."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {bound} s")
        time.sleep(0.05)


def close(url: str, key: str) -> httpx.Response:
    reason = {"reason": "Retest complete; client signed off."}
    return post(url, CLOSE, "bob", reason, **{"idempotency-key": key})


def explain(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = post(url, "/admin/policy/explain", "sam", body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def writes_refused(url: str) -> bool:
    return post(url, FINDINGS, "alice", FINDING).status_code == 403


def decisions(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "decision" and e.get("stage") == "authz"]


@pytest.fixture
def shared(make_stack: StackBuilder, redis_server: RedisServer) -> tuple[OrchestrationStack, Any]:
    redis = {"url": redis_server.url}
    stack = make_stack(redis=redis)
    policy = {"dir": stack_settings(stack.stubs).policy.dir, **SLOW_CHECK}
    return stack, lambda: make_stack.another_gateway(stack, redis=redis, policy=policy)


def test_a_close_through_one_gateway_closes_the_engagement_on_the_other(
    shared: tuple[OrchestrationStack, Any], captured_logs: list[dict[str, Any]]
) -> None:
    stack, another = shared
    other = another()
    assert post(other.url, FINDINGS, "alice", FINDING).status_code == 201  # open before
    closed = close(stack.url, "close-acme-e2e-1")
    assert closed.status_code == 200, closed.text
    wait_for(lambda: writes_refused(other.url))
    line = decisions(captured_logs)[-1]
    assert (line["reason"], line["decision"]) == ("closed_engagement_read_only", "deny")
    assert line["closed"]["source"] == "close_saga"
    assert line["closed"]["ref"] == closed.headers["x-request-id"]
    assert line["closed"]["by"] == "bob"
    assert get(other.url, FINDINGS).status_code == 200  # reads stay allowed
    records = post(other.url, FINDINGS, "rita", FINDING)  # rita holds closed_writer
    assert records.status_code == 409  # allowed by the policy; the service's findings are frozen
    assert records.json()["type"].endswith("conflict")
    answer = explain(other.url, {"subject": "alice", "method": "POST", "path": FINDINGS})
    assert answer["closed"]["source"] == "close_saga"
    assert answer["near_misses"][0]["differs"] == "closed"
    status = get(other.url, "/admin/policy", "sam").json()["engagement_state"]
    assert (status["shared"], status["synced"], status["closed"]) == (True, True, 2)


def test_a_restarted_gateway_still_decides_it_closed_and_reopen_opens_it_everywhere(
    shared: tuple[OrchestrationStack, Any],
) -> None:
    stack, another = shared
    assert close(stack.url, "close-acme-e2e-2").status_code == 200
    first = another()
    wait_for(lambda: writes_refused(first.url))
    first.stop()
    restarted = another()  # a new process state: what it knows comes from Redis at start-up
    assert writes_refused(restarted.url)
    assert post(restarted.url, REOPEN, "alice", {"reason": "not an admin"}).status_code == 403
    reopened = post(restarted.url, REOPEN, "sam", {"reason": "Client asked for a retest."})
    assert reopened.status_code == 200, reopened.text
    body = reopened.json()
    assert body["status"] == "active"
    assert "close saga" in body["was_closed_by"]
    assert [s["name"] for s in body["steps"]] == ["reopen", "unfreeze_findings", "drop_closed"]
    wait_for(lambda: post(stack.url, FINDINGS, "alice", FINDING).status_code == 201)
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []
    # The old key's stored "closed" is stale now (an audit found it replayed as 200):
    stale = close(stack.url, "close-acme-e2e-2")
    assert_problem(stale, 409, "conflict")
    assert "reopened" in stale.json()["detail"]
    assert close(stack.url, "close-acme-e2e-2b").status_code == 200  # a new key closes again


def test_in_memory_a_restart_learns_closed_engagements_from_the_service(
    make_stack: StackBuilder, live_server: Callable[..., LiveServer]
) -> None:
    stack = make_stack()
    assert close(stack.url, "close-acme-e2e-3").status_code == 200
    assert writes_refused(stack.url)
    restarted = make_stack.another_gateway(stack)  # no Redis: nothing shared
    ready = httpx.get(restarted.url + "/readyz", timeout=10).json()
    check = next(c for c in ready["checks"] if c["name"] == "engagement_state")
    assert check["ok"] is True
    response = post(restarted.url, FINDINGS, "alice", FINDING)
    assert_problem(response, 403, "forbidden")
    answer = explain(restarted.url, {"subject": "alice", "method": "POST", "path": FINDINGS})
    assert answer["closed"]["source"] == "engagements_service"
    # The stub seeds initech-redteam closed: reconciliation found it too.
    red_team = post(restarted.url, "/v1/engagements/initech-redteam/findings", "gina", FINDING)
    assert red_team.status_code == 403


def test_frozen_findings_are_a_409_not_a_502(stack: Stack) -> None:
    """Between the freeze and the close, or for a service that froze on its own."""
    freeze = stack.stubs["findings"].url + "/engagements/acme-2026/findings/freeze"
    assert httpx.post(freeze, json={}, timeout=5).status_code == 200
    response = post(stack.url, FINDINGS, "alice", FINDING)
    body = assert_problem(response, 409, "conflict")
    assert "read-only" in str(body["detail"])


def test_a_close_that_cannot_be_published_is_undone(
    make_stack: StackBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed for the services but open for some gateways is worse than not closed."""

    async def unavailable(self: MemoryEngagementState, fact: Any, **_: Any) -> None:
        raise ServiceUnavailable("The shared engagement state cannot be reached.")

    stack = make_stack()
    monkeypatch.setattr(MemoryEngagementState, "close", unavailable)
    response = close(stack.url, "close-acme-e2e-4")
    body = assert_problem(response, 503, "unavailable")
    assert "publish_closed" in str(body["detail"])
    assert "earlier steps were undone" in str(body["detail"])
    engagement = get(stack.url, "/v1/engagements/acme-2026/overview", "bob").json()["engagement"]
    assert engagement["status"] == "active"
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []
    assert post(stack.url, FINDINGS, "alice", FINDING).status_code == 201


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/admin/engagements/initech-2025/reopen", {"reason": "closed by g3"}, 409, "conflict"),
        ("/admin/engagements/no-such-one/reopen", {"reason": "unknown one"}, 404, "not_found"),
        (REOPEN, {"reason": "x"}, 422, "validation_error"),
        (REOPEN, {"reason": "fine", "force": True}, 422, "validation_error"),
        ("/admin/engagements/ACME/reopen", {"reason": "bad id"}, 422, "validation_error"),
    ],
)
def test_reopen_refuses_what_it_cannot_do(
    make_stack: StackBuilder, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    stack = make_stack()
    response = post(stack.url, path, "sam", body)
    assert_problem(response, status, code)
    assert response.json()["corr_id"] == response.headers["x-request-id"]


def _close_held_at_the_report(
    stack: OrchestrationStack,
) -> tuple[threading.Thread, list[httpx.Response]]:
    """A close started in a thread and held at its report step (the reports stub hangs)."""
    stack.faults("reports", hang=True, hang_max_seconds=20)
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(close(stack.url, "close-acme-1")))
    thread.start()
    frozen = stack.stubs["findings"].url + "/_frozen"
    wait_for(lambda: "acme-2026" in httpx.get(frozen, timeout=5).json())  # step 1 done
    wait_for(lambda: stack.requests_seen("reports") > 0)  # step 2 is in the stub
    return thread, answers


@pytest.mark.parametrize("shared_state", [False, True], ids=["memory", "redis"])
def test_a_reopen_or_another_close_while_a_close_runs_is_a_409(
    make_stack: StackBuilder, redis_server: RedisServer, shared_state: bool
) -> None:
    """A reopen sent between the close's freeze and its close step interleaved with it
    (an audit's finding: closed, with its findings unfrozen); two closes with different
    keys both ran. The engagement's lock refuses either while a close runs, on this
    gateway and, with Redis, on another one; once the close ends, the reopen runs."""
    redis = {"redis": {"url": redis_server.url}} if shared_state else {}
    stack = make_stack(service={"read_timeout": 15}, **redis)
    other = make_stack.another_gateway(stack, **redis) if shared_state else stack
    thread, answers = _close_held_at_the_report(stack)
    try:
        reopen = post(other.url, REOPEN, "sam", {"reason": "Client asked for a retest."})
        body = assert_problem(reopen, 409, "conflict")
        assert "close of acme-2026 is running" in str(body["detail"])
        assert reopen.headers["retry-after"] == "1"  # it ends by itself: ask again then
        second = close(other.url, "close-acme-lock-2")
        assert "close of acme-2026 is running" in str(assert_problem(second, 409, "conflict"))
        assert second.headers["retry-after"] == "1"
    finally:
        stack.faults("reports")  # release the report: the close goes on
        thread.join(timeout=30)
    assert answers[0].status_code == 200, answers[0].text
    assert [s["status"] for s in answers[0].json()["steps"]] == ["done"] * 4
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == ["acme-2026"]
    reopened = post(other.url, REOPEN, "sam", {"reason": "Client asked for a retest."})
    assert reopened.status_code == 200, reopened.text  # the lock was released
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []


def test_a_second_reopen_while_one_runs_is_a_409(make_stack: StackBuilder) -> None:
    """The reopen holds the lock too. A close meanwhile is refused before it (the
    engagement stays closed for the policy until the reopen's last step), so what the
    lock orders here is a second reopen: it runs nothing."""
    stack = make_stack(service={"read_timeout": 15})
    assert close(stack.url, "close-acme-lock-3").status_code == 200
    unfreeze = "/engagements/acme-2026/findings/unfreeze"
    stack.faults("findings", hang=True, hang_max_seconds=20, path_prefix=unfreeze)
    answers: list[httpx.Response] = []
    reason = {"reason": "Client asked for a retest."}
    thread = threading.Thread(target=lambda: answers.append(post(stack.url, REOPEN, "sam", reason)))
    thread.start()
    try:
        wait_for(lambda: any(r["path"] == unfreeze for r in stack.seen("findings")))
        reopens = stack.requests_seen("engagements")
        second = post(stack.url, REOPEN, "sam", reason)
        assert "reopen of acme-2026 is running" in str(assert_problem(second, 409, "conflict"))
        assert second.headers["retry-after"] == "1"
        assert stack.requests_seen("engagements") == reopens  # it ran nothing
        assert_problem(close(stack.url, "close-acme-lock-4"), 403, "forbidden")
    finally:
        stack.faults("findings")
        thread.join(timeout=30)
    assert answers[0].status_code == 200, answers[0].text
    assert post(stack.url, FINDINGS, "alice", FINDING).status_code == 201


def test_a_reopen_whose_state_cannot_be_written_says_what_was_done(
    make_stack: StackBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The services reopen and unfreeze first; when the gateways' state then cannot be
    written, the 503 said "nothing was changed". It says what was, and what to do."""
    stack = make_stack()
    assert close(stack.url, "close-acme-reopen-503").status_code == 200

    async def unavailable(self: MemoryEngagementState, engagement: str) -> None:
        raise ServiceUnavailable(
            "The shared engagement state cannot be reached; nothing was changed."
        )

    monkeypatch.setattr(MemoryEngagementState, "reopen", unavailable)
    response = post(stack.url, REOPEN, "sam", {"reason": "Client asked for a retest."})
    detail = str(assert_problem(response, 503, "unavailable")["detail"])
    assert "The services reopened acme-2026" in detail
    assert "may still decide it closed" in detail
    assert "nothing was changed" not in detail
    assert writes_refused(stack.url)  # fail closed: still closed for the gateway
    monkeypatch.undo()
    again = post(stack.url, REOPEN, "sam", {"reason": "Client asked for a retest."})
    assert again.status_code == 200, again.text  # sent again, as the answer says


def test_in_memory_unsynced_state_refuses_writes_not_reads(
    live_server: Callable[..., LiveServer], captured_logs: list[dict[str, Any]], test_key_env: str
) -> None:
    """A restart while the engagements service is down: it cannot tell closed from open.

    An audit found it served writes in closed engagements (201) while ``/readyz`` said
    not ready; readiness is no guard for a caller that does not ask it (nginx
    ``auth_request``, a direct client). Until the state is loaded every engagement
    counts as closed: writes 403, reads served, the gateway-wide routes unaffected.
    """
    findings = live_server(create_stub_app("findings"))
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, never listening: every connect is refused
        down = f"http://127.0.0.1:{reserved.getsockname()[1]}"
        policy = {"dir": str(POLICY_DIR), "engagement_state": {"startup_timeout_seconds": 1}}
        settings = make_settings({"findings": findings.url, "engagements": down}, policy=policy)
        gateway = live_server(create_app(settings))
        ready = httpx.get(gateway.url + "/readyz", timeout=10).json()
        check = next(c for c in ready["checks"] if c["name"] == "engagement_state")
        assert check["ok"] is False
        write = post(gateway.url, FINDINGS, "alice", FINDING)
        read = get(gateway.url, FINDINGS, "alice")
        status = get(gateway.url, "/admin/policy", "sam")
        answer = explain(gateway.url, {"subject": "alice", "method": "POST", "path": FINDINGS})
    assert_problem(write, 403, "forbidden")
    assert read.status_code == 200
    assert status.status_code == 200
    assert answer["decision"] == "deny"
    assert answer["closed"]["source"] == "engagement_state_not_synced"
    [denied] = [e for e in decisions(captured_logs) if e["decision"] == "deny"]
    assert (denied["reason"], denied["closed"]["source"]) == (
        "closed_engagement_read_only",
        "engagement_state_not_synced",
    )


def test_a_reopen_whose_lock_redis_lost_stops_before_the_unfreeze(
    make_stack: StackBuilder, redis_server: RedisServer
) -> None:
    """The reopen confirms its lock after the service's reopen: lost meanwhile (here
    another holder took it, as a close could once Redis lost the key), it unfreezes
    nothing and drops no closed fact, and says to send it again; sent again, it runs."""
    stack = make_stack(redis={"url": redis_server.url}, service={"read_timeout": 15})
    assert close(stack.url, "close-acme-lock-lost").status_code == 200
    reopen = "/engagements/acme-2026/reopen"
    stack.faults("engagements", latency_ms=600, path_prefix=reopen)
    raw = redis.Redis(port=redis_server.port)
    key = RedisEngagementLocks.key("acme-2026")
    answers: list[httpx.Response] = []
    reason = {"reason": "Client asked for a retest."}
    thread = threading.Thread(target=lambda: answers.append(post(stack.url, REOPEN, "sam", reason)))
    thread.start()
    try:
        # Its lock is taken before the service's reopen, which takes 600 ms here.
        wait_for(lambda: (raw.get(key) or b"").startswith(b"reopen|"))
        raw.set(key, b"close|another-gateway", px=60_000)
    finally:
        thread.join(timeout=30)
    detail = str(assert_problem(answers[0], 503, "engagement_lock_lost")["detail"])
    assert "send it again" in detail
    unfreeze = "/engagements/acme-2026/findings/unfreeze"
    assert not any(r["path"] == unfreeze for r in stack.seen("findings"))
    assert writes_refused(stack.url)  # still closed for the gateways
    raw.delete(key)  # the other holder ended
    stack.faults("engagements")
    again = post(stack.url, REOPEN, "sam", reason)
    assert again.status_code == 200, again.text
    assert post(stack.url, FINDINGS, "alice", FINDING).status_code == 201


# Each latency (2 s) fits one attempt (0.5 + 3 s); both calls of a reopen (4 s) do not
# fit the 3.5 s deadline, so the second is cut about 1.5 s in.
SLOW_REOPEN_STACK: dict[str, Any] = {
    "service": {"connect_timeout": 0.5, "read_timeout": 3},
    "orchestration": {"downstream_deadline_seconds": 3.5},
}


def test_a_reopen_past_its_deadline_is_cut_and_leaves_the_engagement_closed(
    make_stack: StackBuilder,
) -> None:
    """The reopen's calls had no deadline: each slow answer inside its read timeout, it
    answered 200 after both. Cut, it has not dropped the closed fact (its last step), so
    the engagement stays closed; sent again, it completes."""
    stack = make_stack(**SLOW_REOPEN_STACK)
    assert close(stack.url, "close-acme-deadline").status_code == 200
    stack.faults("engagements", latency_ms=2000, path_prefix="/engagements/acme-2026/reopen")
    unfreeze = "/engagements/acme-2026/findings/unfreeze"
    stack.faults("findings", latency_ms=2000, path_prefix=unfreeze)
    reason = {"reason": "Client asked for a retest."}
    body = assert_problem(post(stack.url, REOPEN, "sam", reason), 504, "gateway_timeout")
    assert body["service"] == "findings"
    assert "deadline" in str(body["detail"])
    assert writes_refused(stack.url), "the closed fact stands: read-only on every gateway"
    stack.faults("engagements")
    stack.faults("findings")
    again = post(stack.url, REOPEN, "sam", reason)
    assert again.status_code == 200, again.text
    assert str(again.json()["was_closed_by"]).startswith("closed by the close saga")
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []
    assert post(stack.url, FINDINGS, "alice", FINDING).status_code == 201
