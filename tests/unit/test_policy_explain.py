"""``explain`` that teaches: roles with file:line, near misses and closed facts; fields checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.authz.closed import ClosedFact
from app.authz.explain import explain
from app.authz.fields import FieldError, check_action, engagement_of, resolve_engagement
from app.authz.policy import PolicyEngine
from app.authz.reference import reference_decide
from app.authz.source import CLOSED_WRITER, READ_ACTIONS, read_policy
from app.core.config import PolicySettings
from tests.conftest import POLICY_DIR
from tests.unit.test_policy_differential import ACTIONS, ENGAGEMENTS, GROUPS, PATHS, USERS
from tests.unit.test_policy_query import Policy, policies, state_fact

FINDINGS = "/v1/engagements/{}/findings"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.load(PolicySettings(dir=POLICY_DIR))


def line_of(text: str) -> str:
    lines = (POLICY_DIR / "policy.csv").read_text().splitlines()
    return f"policy.csv:{lines.index(text) + 1}"


def test_a_deny_in_another_engagement_names_where_the_role_is_held(engine: PolicyEngine) -> None:
    """The issue's case: alice is an analyst, but not in initech-redteam."""
    request = ("initech-redteam", FINDINGS.format("initech-redteam"), "GET")
    answer = explain(engine, "alice", (), request)
    assert (answer.decision.allowed, answer.decision.reason) == (False, "no_matching_allow")
    assert answer.roles_here == ()
    assert answer.roles_global == ()
    analyst = next(m for m in answer.near_misses if m.rule.sub == "analyst")
    assert analyst.differs == "role"
    assert line_of("g, alice, analyst, acme-2026") in analyst.detail
    assert line_of("g, alice, analyst, globex-cloud") in analyst.detail
    assert answer.near_misses[0].differs == "role"


def test_a_role_miss_names_where_the_callers_groups_hold_the_role(engine: PolicyEngine) -> None:
    """gina holds nothing herself; her group red-team is an analyst in initech-redteam.

    The role miss is every principal's: the detail names each one looked at and where
    each holds the role (it spoke of the subject only: "no g or g2 line grants it to
    'gina'", with the group's grant unmentioned).
    """
    request = ("acme-2026", FINDINGS.format("acme-2026"), "GET")
    answer = explain(engine, "gina", ("red-team",), request)
    assert (answer.decision.allowed, answer.decision.reason) == (False, "no_matching_allow")
    analyst = next(m for m in answer.near_misses if m.rule.sub == "analyst")
    assert analyst.differs == "role"
    assert analyst.detail.startswith(
        "needs role 'analyst', which none of 'gina', 'group:red-team' holds in 'acme-2026'; "
    )
    group_line = line_of("g, group:red-team, analyst, initech-redteam")
    assert f"'group:red-team' holds it in initech-redteam ({group_line})" in analyst.detail
    assert "'gina' holds it" not in analyst.detail  # she holds it nowhere herself
    # Without groups the detail reads as it always has.
    alone = explain(engine, "gina", (), request)
    solo = next(m for m in alone.near_misses if m.rule.sub == "analyst")
    assert solo.detail == (
        "needs role 'analyst', which 'gina' does not hold in 'acme-2026'; "
        "no g or g2 line grants it to 'gina'"
    )


def test_a_role_nobody_asking_holds_anywhere_says_so_for_all_of_them(
    engine: PolicyEngine,
) -> None:
    request = ("acme-2026", FINDINGS.format("acme-2026"), "GET")
    answer = explain(engine, "nobody", ("no-such-group",), request)
    analyst = next(m for m in answer.near_misses if m.rule.sub == "analyst")
    assert analyst.detail == (
        "needs role 'analyst', which none of 'nobody', 'group:no-such-group' holds in "
        "'acme-2026'; no g or g2 line grants it to any of them"
    )


def test_roles_here_and_global_carry_every_link(engine: PolicyEngine) -> None:
    request = ("acme-2026", FINDINGS.format("acme-2026"), "DELETE")
    answer = explain(engine, "bob", (), request)
    analyst = next(r for r in answer.roles_here if r.role == "analyst")
    assert [str(link) for link in analyst.links] == [
        f"g, bob, engagement_lead, acme-2026 ({line_of('g, bob, engagement_lead, acme-2026')})",
        f"g, engagement_lead, analyst, * ({line_of('g, engagement_lead, analyst, *')})",
    ]
    rita = explain(engine, "rita", (), request)
    assert {r.role for r in rita.roles_global} == {
        "records_officer",
        "auditor",
        "analyst",
        "closed_writer",
    }
    assert all(r.scope == "*" for r in rita.roles_global)
    differs = {m.differs for m in answer.near_misses}
    assert "action" in differs  # POST and GET rules on the same object


def test_an_object_and_a_domain_near_miss(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text(
        "p, viewer, acme-2026, /v1/engagements/:e/reports, GET, allow\n"
        "p, viewer, *, /v1/engagements/:e/reports/:r, GET, allow\n"
        "g, zoe, viewer, globex-cloud\n"
        "g, zoe, viewer, acme-2026\n"
    )
    engine = PolicyEngine(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    in_globex = explain(
        engine, "zoe", (), ("globex-cloud", "/v1/engagements/globex-cloud/reports", "GET")
    )
    misses = {m.differs: m for m in in_globex.near_misses}
    assert "written for engagement 'acme-2026'" in misses["domain"].detail
    assert "allows /v1/engagements/:e/reports/:r" in misses["object"].detail
    assert [m.differs for m in in_globex.near_misses] == ["domain", "object"]


def test_a_closed_engagement_shows_its_g3_line(engine: PolicyEngine) -> None:
    answer = explain(engine, "erin", (), ("initech-2025", FINDINGS.format("initech-2025"), "POST"))
    assert answer.decision.reason == "closed_engagement_read_only"
    assert answer.decision.closed == ClosedFact(
        "initech-2025", "policy", line_of("g3, initech-2025, closed")
    )
    closed = answer.near_misses[0]
    assert closed.differs == "closed"
    assert "g3, initech-2025, closed" in closed.detail
    assert "closed_writer" in closed.detail


def test_a_closed_fact_from_the_engagement_state_is_named(engine: PolicyEngine) -> None:
    fact = ClosedFact("acme-2026", "close_saga", "corr-1234", 1_800_000_000.0, "bob")
    answer = explain(engine, "alice", (), ("acme-2026", FINDINGS.format("acme-2026"), "POST"), fact)
    assert answer.decision.reason == "closed_engagement_read_only"
    assert answer.decision.closed == fact
    assert "closed by the close saga at 2027-01-15T08:00:00Z (by bob, corr_id corr-1234)" in (
        answer.near_misses[0].detail
    )
    reads = explain(engine, "alice", (), ("acme-2026", FINDINGS.format("acme-2026"), "GET"), fact)
    assert reads.decision.allowed
    assert reads.near_misses == ()


def test_an_allow_beaten_by_a_deny_is_overridden_not_a_role_the_caller_lacks(
    engine: PolicyEngine,
) -> None:
    """alice holds analyst (policy.csv:25 allows the POST) but her group's client_viewer
    deny (policy.csv:17) wins: explain said analyst was a role 'group:acme-client' lacks,
    sending the admin after a grant that exists."""
    request = ("acme-2026", FINDINGS.format("acme-2026"), "POST")
    answer = explain(engine, "alice", ("acme-client",), request)
    assert answer.decision.reason == "denied_by_rule"
    first = answer.near_misses[0]
    assert (first.rule.location, first.differs) == ("policy.csv:25", "overridden")
    assert first.detail == (
        "matches for 'alice', but the deny rule at policy.csv:17 overrides every allow"
    )
    assert all(m.rule.location != "policy.csv:25" for m in answer.near_misses[1:])


def test_a_read_denied_by_a_rule_in_a_closed_engagement_is_overridden_not_read_only(
    tmp_path: Path,
) -> None:
    """erin's GET in closed initech-2025 is denied by a rule; explain said the analyst
    allow was held back because the engagement is read-only (reads never are), sending
    the admin to reopen it."""
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    deny = "p, erin, initech-2025, /v1/engagements/initech-2025/findings, GET, deny\n"
    (directory / "policy.csv").write_text((POLICY_DIR / "policy.csv").read_text() + deny)
    engine = PolicyEngine.load(PolicySettings(dir=directory))
    request = ("initech-2025", FINDINGS.format("initech-2025"), "GET")
    answer = explain(engine, "erin", (), request)
    assert answer.decision.reason == "denied_by_rule"
    first = answer.near_misses[0]
    assert (first.rule.location, first.differs) == ("policy.csv:23", "overridden")
    assert "policy.csv:65" in first.detail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(  # a read in a closed engagement, an allow and a deny matching: "overridden"
    lines=["p, analyst, *, /v1/*, GET, allow", "p, alice, e1, /v1/*, GET, deny",
           "g, alice, analyst, e1"],
    subject="alice", groups=[], request=("e1", "/v1/engagements/e1/findings", "GET"), close=True,
)  # fmt: skip
@example(  # a closed_writer's write beaten by a deny: "overridden", not "read-only"
    lines=["p, analyst, *, /v1/*, POST, allow", "p, alice, e1, /v1/*, POST, deny",
           "g, alice, analyst, e1", "g2, alice, closed_writer"],
    subject="alice", groups=[], request=("e1", "/v1/engagements/e1/findings", "POST"), close=True,
)  # fmt: skip
@given(
    lines=policies,
    subject=st.sampled_from(USERS),
    groups=st.lists(st.sampled_from(GROUPS), max_size=2, unique=True),
    request=st.tuples(
        st.sampled_from(ENGAGEMENTS), st.sampled_from(PATHS), st.sampled_from(ACTIONS)
    ),
    close=st.booleans(),
)
def test_explain_agrees_with_the_decision_and_names_what_beat_an_allow(
    lines: list[str],
    subject: str,
    groups: list[str],
    request: tuple[str, str, str],
    close: bool,
) -> None:
    """On random policies: explain's decision is plain pycasbin's; an allow that matched
    in full is "closed" only where the close held it back (a write by a principal without
    closed_writer), else "overridden" by the deny that decided; a read-only deny shows
    the allow the close held back first."""
    closed = request[0] if close else None  # the engagement state closes it (or a g3 line)
    policy = Policy(lines, closed)
    try:
        answer = explain(policy.engine, subject, groups, request, state_fact(closed, request[0]))
        decision = answer.decision
        expected = reference_decide(policy.casbin, policy.role_names, subject, groups, request)
        assert (decision.allowed, decision.matched_rule) == expected
        compiled, dom, act = policy.engine.compiled, request[0], request[2]
        for miss in answer.near_misses:
            if miss.differs == "overridden":
                assert decision.reason == "denied_by_rule"
            if miss.differs == "closed":
                assert decision.closed is not None
                assert act not in READ_ACTIONS
                assert any(
                    miss.rule.sub in {**compiled.domain_roles(p, dom), **compiled.global_roles(p)}
                    and CLOSED_WRITER not in compiled.global_roles(p)
                    for p in (subject, *(f"group:{g}" for g in groups))
                )
        if decision.reason == "closed_engagement_read_only":
            assert answer.near_misses[0].differs == "closed"
    finally:
        policy.close()


def test_an_allow_has_no_near_misses(engine: PolicyEngine) -> None:
    answer = explain(engine, "alice", (), ("acme-2026", FINDINGS.format("acme-2026"), "GET"))
    assert answer.decision.allowed
    assert answer.near_misses == ()


@pytest.mark.parametrize(
    ("path", "engagement"),
    [
        ("/v1/engagements/acme-2026/findings", "acme-2026"),
        ("/v1/engagements/acme-2026", "acme-2026"),
        ("/v1/engagements", "*"),
        ("/admin/policy", "*"),
        ("/admin/engagements/acme-2026/reopen", "*"),
    ],
)
def test_the_engagement_is_the_paths(path: str, engagement: str) -> None:
    assert engagement_of(path) == engagement
    assert resolve_engagement(path, None) == engagement
    assert resolve_engagement(path, engagement) == engagement


def test_an_engagement_that_disagrees_with_the_path_is_an_error() -> None:
    with pytest.raises(FieldError, match="disagrees with the path"):
        resolve_engagement("/v1/engagements/initech-redteam/findings", "acme-2026")
    with pytest.raises(FieldError, match="malformed"):
        engagement_of("/v1/engagements/ACME/findings")


@pytest.mark.parametrize("action", ["GET", "POST", "DELETE", "OPTIONS", "read", "close_out"])
def test_valid_actions(action: str) -> None:
    assert check_action(action) == action


@pytest.mark.parametrize(
    ("action", "message"),
    [("get", "use 'GET'"), ("Post", "use 'POST'"), ("Read", "neither"), ("x-y", "neither")],
)
def test_invalid_actions(action: str, message: str) -> None:
    with pytest.raises(FieldError, match=message):
        check_action(action)


def test_a_group_named_twice_is_one_principal_in_the_detail(engine: PolicyEngine) -> None:
    request = ("acme-2026", FINDINGS.format("acme-2026"), "GET")
    twice = explain(engine, "gina", ("red-team", "red-team"), request)
    once = explain(engine, "gina", ("red-team",), request)
    assert [m.detail for m in twice.near_misses] == [m.detail for m in once.near_misses]
    assert twice.decision.groups == ("red-team",)
