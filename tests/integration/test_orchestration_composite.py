"""Engagement composites over loopback: degraded overview, close saga, idempotent replay."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.main import create_app
from app.workflows.engagement_lock import RedisEngagementLocks
from tests.conftest import LiveServer, signer
from tests.integration.orchestration_stack import (
    StackBuilder,
    closed_writer_lead_policy,
    stack_settings,
)
from tests.integration.test_gateway_e2e import assert_problem
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

OVERVIEW = "/v1/engagements/acme-2026/overview"
CLOSE = "/v1/engagements/acme-2026/close"
REASON = {"reason": "Retest complete; client signed off."}


def client(base_url: str, subject: str = "bob") -> httpx.Client:
    return httpx.Client(base_url=base_url, auth=signer(subject), timeout=15)


def test_overview_combines_three_services(make_stack: StackBuilder) -> None:
    stack = make_stack()
    with client(stack.url, "carol") as gateway:
        response = gateway.get(OVERVIEW)
    assert response.status_code == 200
    body = response.json()
    assert body["degraded"] == []
    assert body["engagement"]["client"] == "Acme Corp"
    assert body["findings"]["count"] == sum(body["findings"]["by_severity"].values()) > 0
    assert body["reports"]
    assert body["reports"][0]["engagement_id"] == "acme-2026"


def test_overview_is_partial_when_a_service_is_down(make_stack: StackBuilder) -> None:
    stack = make_stack()
    stack.stubs["reports"].stop()
    with client(stack.url) as gateway:
        body = gateway.get(OVERVIEW).json()
    assert body["degraded"] == [{"service": "reports", "reason": "bad_gateway"}]
    assert body["reports"] is None
    assert body["engagement"]["id"] == "acme-2026"
    assert body["findings"]["count"] > 0


def test_overview_marks_open_breakers_and_missed_deadlines(make_stack: StackBuilder) -> None:
    stack = make_stack(
        service={"breaker": {"fail_max": 1}, "retry": {"attempts": 1}},
        orchestration={"overview_deadline_seconds": 1.5},
    )
    stack.faults("reports", error_rate=1.0, error_status=500)
    stack.faults("findings", latency_ms=4000)
    with client(stack.url) as gateway:
        first = gateway.get(OVERVIEW).json()
        second = gateway.get(OVERVIEW).json()
    assert {(d["service"], d["reason"]) for d in first["degraded"]} == {
        ("reports", "bad_gateway"),
        ("findings", "deadline_exceeded"),
    }
    # Both count as failures, so with fail_max=1 both breakers are now open.
    assert {(d["service"], d["reason"]) for d in second["degraded"]} == {
        ("reports", "circuit_open"),
        ("findings", "circuit_open"),
    }
    assert second["engagement"]["status"] == "active"


def test_overview_of_an_unknown_engagement_is_404(make_stack: StackBuilder) -> None:
    stack = make_stack()
    with client(stack.url, "dana") as gateway:
        response = gateway.get("/v1/engagements/no-such-thing/overview")
    assert_problem(response, 404, "not_found")


def test_overview_with_every_service_down_is_an_error(make_stack: StackBuilder) -> None:
    stack = make_stack()
    for name in ("engagements", "findings", "reports"):
        stack.faults(name, error_rate=1.0, error_status=500)
    with client(stack.url) as gateway:
        response = gateway.get(OVERVIEW)
    assert_problem(response, 502, "bad_gateway")


def test_overview_needs_a_staffed_caller(make_stack: StackBuilder) -> None:
    stack = make_stack()
    with client(stack.url, "alice") as gateway:
        response = gateway.get("/v1/engagements/initech-redteam/overview")
    assert_problem(response, 403, "forbidden")


def test_close_runs_every_step_and_logs_it(
    make_stack: StackBuilder, captured_logs: list[dict[str, Any]]
) -> None:
    stack = make_stack()
    with client(stack.url) as gateway:
        response = gateway.post(CLOSE, json=REASON, headers={"idempotency-key": "close-acme-0001"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "closed"
    assert [s["name"] for s in body["steps"]] == [
        "freeze_findings",
        "render_report",
        "close",
        "publish_closed",
    ]
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == ["acme-2026"]
    steps = [
        (line["step"], line["status"]) for line in captured_logs if line["event"] == "saga_step"
    ]
    assert steps == [
        ("freeze_findings", "started"),
        ("freeze_findings", "done"),
        ("render_report", "started"),
        ("render_report", "done"),
        ("close", "started"),
        ("close", "done"),
        ("publish_closed", "started"),
        ("publish_closed", "done"),
    ]
    corr_ids = {line["corr_id"] for line in captured_logs if line["event"] == "saga_step"}
    assert corr_ids == {response.headers["x-request-id"]}


def test_close_compensates_in_reverse_order_when_a_step_fails(
    make_stack: StackBuilder, captured_logs: list[dict[str, Any]]
) -> None:
    stack = make_stack()
    stack.faults(
        "engagements", error_rate=1.0, error_status=500, path_prefix="/engagements/acme-2026/close"
    )
    with client(stack.url) as gateway:
        response = gateway.post(CLOSE, json=REASON, headers={"idempotency-key": "close-acme-0002"})
    body = assert_problem(response, 502, "bad_gateway")
    assert body["service"] == "engagements"
    assert "undone" in str(body["detail"])
    compensated = [
        line["step"]
        for line in captured_logs
        if line["event"] == "saga_step" and line["status"] == "compensated"
    ]
    # A 5xx may have come after the service applied the close: it is undone too (reopen),
    # then the others in reverse; undo calls are idempotent (keyed, retried).
    assert compensated == ["close", "render_report", "freeze_findings"]
    undo_keys = {
        s["path"]: s["headers"].get("idempotency-key", "")
        for name in ("engagements", "findings")
        for s in stack.seen(name)
        if s["path"].endswith(("/reopen", "/unfreeze"))
    }
    assert undo_keys["/engagements/acme-2026/reopen"].endswith(":undo-close")
    assert undo_keys["/engagements/acme-2026/findings/unfreeze"].endswith(":undo-freeze")
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []
    report_calls = [(s["method"], s["path"]) for s in stack.seen("reports")]
    assert report_calls[-1][0] == "DELETE"
    assert report_calls[-2] == ("POST", "/engagements/acme-2026/reports")
    with client(stack.url) as gateway:
        reports = gateway.get(OVERVIEW).json()["reports"]
    assert all(r["kind"] != "final" for r in reports), "the final report was withdrawn"


def test_a_close_retried_after_compensation_applies_every_step_again(
    make_stack: StackBuilder,
) -> None:
    """Failures are not remembered; the retry must not get the undone steps' stale replays."""
    stack = make_stack()
    stack.faults(
        "engagements", error_rate=1.0, error_status=500, path_prefix="/engagements/acme-2026/close"
    )
    headers = {"idempotency-key": "close-acme-0005"}
    with client(stack.url) as gateway:
        assert_problem(gateway.post(CLOSE, json=REASON, headers=headers), 502, "bad_gateway")
        stack.faults("engagements", error_rate=0.0)
        again = gateway.post(CLOSE, json=REASON, headers=headers)
    assert again.status_code == 200, again.text
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == ["acme-2026"]
    deleted = [s["path"] for s in stack.seen("reports") if s["method"] == "DELETE"]
    assert deleted
    assert not any(p.endswith("/" + again.json()["final_report_id"]) for p in deleted)


def test_close_is_replayed_not_reapplied_for_the_same_key(
    make_stack: StackBuilder, tmp_path: Path
) -> None:
    """A closed engagement is read-only: only a closed_writer may even resend its close."""
    stack = make_stack(policy={"dir": str(closed_writer_lead_policy(tmp_path))})
    headers = {"idempotency-key": "close-acme-0003"}
    with client(stack.url) as gateway:
        first = gateway.post(CLOSE, json=REASON, headers=headers)
        calls = {name: stack.requests_seen(name) for name in stack.stubs}
        again = gateway.post(CLOSE, json=REASON, headers=headers)
        replay_calls = {name: stack.requests_seen(name) for name in stack.stubs}
        reused = gateway.post(CLOSE, json={"reason": "something else"}, headers=headers)
        fresh = gateway.post(CLOSE, json=REASON, headers={"idempotency-key": "close-acme-0004"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert (first.headers["idempotent-replayed"], again.headers["idempotent-replayed"]) == (
        "false",
        "true",
    )
    assert replay_calls == calls, "the replay called no service"
    assert_problem(reused, 422, "idempotency_key_reused")
    assert_problem(fresh, 409, "conflict")  # a new key on a closed engagement


def test_a_close_resent_after_it_succeeded_is_refused_as_read_only(
    make_stack: StackBuilder, captured_logs: list[dict[str, Any]]
) -> None:
    """Closed means closed at once: the lead's own resend is a write in a closed engagement."""
    stack = make_stack()
    headers = {"idempotency-key": "close-acme-0006"}
    with client(stack.url) as gateway:
        first = gateway.post(CLOSE, json=REASON, headers=headers)
        again = gateway.post(CLOSE, json=REASON, headers=headers)
    assert first.status_code == 200, first.text
    assert_problem(again, 403, "forbidden")
    denied = [e for e in captured_logs if e["event"] == "decision" and e.get("stage") == "authz"]
    assert denied[-1]["reason"] == "closed_engagement_read_only"
    closed = denied[-1]["closed"]
    assert (closed["source"], closed["by"]) == ("close_saga", "bob")
    assert closed["ref"] == first.headers["x-request-id"]  # where the fact came from


def test_close_requires_a_well_formed_idempotency_key(make_stack: StackBuilder) -> None:
    stack = make_stack()
    with client(stack.url) as gateway:
        missing = gateway.post(CLOSE, json=REASON)
        malformed = gateway.post(CLOSE, json=REASON, headers={"idempotency-key": "x y"})
        invalid_body = gateway.post(
            CLOSE, json={"reason": ""}, headers={"idempotency-key": "k" * 9}
        )
    assert_problem(missing, 400, "bad_request")
    assert_problem(malformed, 400, "bad_request")
    assert_problem(invalid_body, 422, "validation_error")
    paths = [seen["path"] for seen in stack.seen("engagements")]
    assert paths == ["/engagements"]  # only the start-up reconciliation of closed engagements


def test_only_the_engagement_lead_may_close(make_stack: StackBuilder) -> None:
    stack = make_stack()
    with client(stack.url, "alice") as gateway:
        response = gateway.post(CLOSE, json=REASON, headers={"idempotency-key": "close-acme-0005"})
    assert_problem(response, 403, "forbidden")


def test_a_step_with_an_invalid_answer_is_undone_before_anything_else_commits(
    make_stack: StackBuilder, live_server: Callable[[FastAPI], LiveServer]
) -> None:
    """Found by an audit: the answers were parsed after every step (publish included) had
    committed, so a reports service answering 202 ``{"status": "queued"}`` left the
    engagement closed, frozen and published, and the caller a 502. The step fails now,
    and what was done before it is undone; the close is never sent."""
    stack = make_stack()
    queued = FastAPI()

    @queued.post("/engagements/{engagement_id}/reports", status_code=202)
    async def render(engagement_id: str) -> dict[str, str]:
        return {"status": "queued"}

    stubs = {**stack.stubs, "reports": live_server(queued)}
    gateway = live_server(create_app(stack_settings(stubs)))
    with client(gateway.url) as caller:
        response = caller.post(CLOSE, json=REASON, headers={"idempotency-key": "close-bad-0001"})
    body = assert_problem(response, 502, "bad_gateway")
    assert body["service"] == "reports"
    # The render may have been queued: sent again with its key, it answers "queued" again,
    # with no report to delete; said so, and the freeze is undone all the same.
    assert "could NOT undo render_report; the other steps were undone" in str(body["detail"])
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []
    assert not [s for s in stack.seen("engagements") if s["path"].endswith("/close")]
    with client(gateway.url) as caller:
        overview = caller.get("/v1/engagements/acme-2026/overview").json()
    assert overview["engagement"]["status"] == "active"


def test_two_closes_at_once_leave_the_engagement_closed_and_its_findings_frozen(
    make_stack: StackBuilder,
) -> None:
    """Found by an audit: the close that lost the race (the service answered its close
    step 409) undid its freeze, which was the winner's too: closed, findings unfrozen.
    Whichever wins, exactly one close succeeds and the end state is closed and frozen."""
    stack = make_stack()
    stack.faults("reports", latency_ms=400)

    def close(key: str) -> httpx.Response:
        with client(stack.url) as caller:
            return caller.post(CLOSE, json=REASON, headers={"idempotency-key": key})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(close, "race-key-A001")
        threading.Event().wait(0.1)
        second = pool.submit(close, "race-key-B001")
        statuses = sorted(
            [first.result(timeout=60).status_code, second.result(timeout=60).status_code]
        )
    assert statuses == [200, 409]
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == ["acme-2026"]
    with client(stack.url) as caller:
        overview = caller.get("/v1/engagements/acme-2026/overview").json()
    assert overview["engagement"]["status"] == "closed"


def test_a_close_whose_lock_redis_lost_stops_before_its_close_step_and_undoes(
    make_stack: StackBuilder, redis_server: RedisServer
) -> None:
    """Found by an audit: a Redis that lost the lock mid-close let a reopen run beside
    the saga (the end state closed, its findings unfrozen). The saga confirms its lock
    before the close step: lost (here taken by a reopen since), it stops there, undoes
    its freeze and its report, and leaves the other holder's lock alone."""
    stack = make_stack(redis={"url": redis_server.url})
    stack.faults("reports", latency_ms=600)
    raw = redis.Redis(port=redis_server.port)
    key = RedisEngagementLocks.key("acme-2026")
    with concurrent.futures.ThreadPoolExecutor(1) as pool, client(stack.url) as caller:
        pending = pool.submit(
            caller.post, CLOSE, json=REASON, headers={"idempotency-key": "lost-lock-A001"}
        )
        deadline = time.monotonic() + 10
        while not any(s["path"].endswith("/freeze") for s in stack.seen("findings")):
            assert time.monotonic() < deadline, "the saga never froze the findings"
            time.sleep(0.02)
        assert raw.exists(key) == 1  # the saga's lock, while it renders the report
        raw.set(key, b"reopen|another-gateway", px=60_000)
        response = pending.result(timeout=60)
    body = assert_problem(response, 503, "engagement_lock_lost")
    assert "render_report" not in body["detail"]
    assert "failed at step close" in body["detail"]
    assert "earlier steps were undone" in body["detail"]
    assert response.headers["retry-after"] == "1"
    assert not any(s["path"].endswith("/close") for s in stack.seen("engagements"))
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []
    assert stack.seen("reports")[-1]["method"] == "DELETE"
    assert raw.get(key) == b"reopen|another-gateway"


def test_a_render_whose_answer_was_lost_is_withdrawn_and_a_resend_leaves_one_final_report(
    make_stack: StackBuilder,
) -> None:
    """Found by an audit: the reports service rendered, its answer came too late, and the
    saga undid the freeze only: an orphan final report, and a second one when the close
    was sent again. The render is sent again with its key and the report it answers is
    deleted."""
    stack = make_stack(service={"read_timeout": 0.5, "retry": {"attempts": 1}})
    stack.faults("reports", slow_body_ms=3000, path_prefix="/engagements/acme-2026/reports")

    def clear_once_rendered() -> None:  # the fault gone before the undo's render
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(s["method"] == "POST" for s in stack.seen("reports")):
                stack.faults("reports")
                return
            time.sleep(0.02)

    with concurrent.futures.ThreadPoolExecutor(1) as pool, client(stack.url) as caller:
        cleared = pool.submit(clear_once_rendered)
        failed = caller.post(CLOSE, json=REASON, headers={"idempotency-key": "lost-render-A1"})
        cleared.result(timeout=15)
    body = assert_problem(failed, 504, "gateway_timeout")
    assert "failed at step render_report" in str(body["detail"])
    assert "earlier steps were undone" in str(body["detail"])
    calls = [
        (s["method"], s["path"], s["headers"].get("idempotency-key")) for s in stack.seen("reports")
    ]
    assert [c[:2] for c in calls] == [
        ("POST", "/engagements/acme-2026/reports"),
        ("POST", "/engagements/acme-2026/reports"),
        ("DELETE", calls[-1][1]),
    ]
    assert calls[0][2] == calls[1][2]  # the same render, answered again
    with client(stack.url) as caller:
        again = caller.post(CLOSE, json=REASON, headers={"idempotency-key": "lost-render-A1"})
        assert again.status_code == 200, again.text
        reports = caller.get(OVERVIEW).json()["reports"]
    finals = [r["id"] for r in reports if r["kind"] == "final"]
    assert finals == [again.json()["final_report_id"]]


def test_a_render_refused_is_not_reported_as_an_undo_that_failed(make_stack: StackBuilder) -> None:
    """A review of the render undo: a 4xx the typed route maps to 502 counts as maybe
    applied; the keyed render sent again is refused the same way, and nothing was
    rendered to withdraw, so the close says the earlier steps were undone."""
    stack = make_stack()
    stack.faults(
        "reports", error_rate=1.0, error_status=422, path_prefix="/engagements/acme-2026/reports"
    )
    with client(stack.url) as caller:
        response = caller.post(CLOSE, json=REASON, headers={"idempotency-key": "refused-render"})
    body = assert_problem(response, 502, "bad_gateway")
    assert "failed at step render_report" in str(body["detail"])
    assert "earlier steps were undone" in str(body["detail"])
    assert httpx.get(stack.stubs["findings"].url + "/_frozen").json() == []
    posts = [s for s in stack.seen("reports") if s["method"] == "POST"]
    assert len(posts) == 2  # the render, and the same keyed render sent again by the undo
    assert posts[0]["headers"]["idempotency-key"] == posts[1]["headers"]["idempotency-key"]
