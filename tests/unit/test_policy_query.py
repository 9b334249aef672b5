"""who-can and what-can equal brute-force enumeration with pycasbin, on random policies.

Hypothesis draws policies in the differential test's vocabulary (allow and deny
rules, per-engagement, engagement-* and global roles, inheritance, groups,
closed engagements, closed_writer). For a random request, ``who_can`` must list
exactly the principals for which plain pycasbin ``enforce_ex`` says allow, with
the same rule; for a random subject and groups, ``WhatCan.permits`` must give
pycasbin's combined answer for every path and action of the universe. The
engagement state's closed fact must act exactly like a ``g3`` line.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.authz.closed import ClosedFact
from app.authz.policy import PolicyEngine
from app.authz.query import engagements_for, what_can, who_can
from app.authz.reference import casbin_enforcer, reference_decide
from app.authz.source import read_policy
from app.core.config import PolicySettings
from tests.conftest import POLICY_DIR
from tests.unit.test_policy_differential import (
    ACTIONS,
    ENGAGEMENTS,
    GROUPS,
    OBJECTS,
    PATHS,
    ROLES,
    USERS,
    random_policy,
)

PRINCIPALS = [*USERS, *(f"group:{g}" for g in GROUPS)]
NAMES = [*PRINCIPALS, *ROLES, "closed_writer"]
DOMAINS = [*ENGAGEMENTS, "*"]

rules = st.builds(
    "p, {}, {}, {}, {}, {}".format,
    st.sampled_from([*ROLES, *ROLES, *PRINCIPALS]),
    st.sampled_from(DOMAINS),
    st.sampled_from(OBJECTS),
    st.sampled_from([*ACTIONS, "*"]),
    st.sampled_from(["allow", "allow", "deny"]),
)
grants = st.builds(
    "g, {}, {}, {}".format,
    st.sampled_from([*PRINCIPALS, *ROLES]),
    st.sampled_from(ROLES),
    st.sampled_from(DOMAINS),
)
global_grants = st.builds(
    "g2, {}, {}".format,
    st.sampled_from([*USERS, *ROLES]),
    st.sampled_from([*ROLES, "closed_writer"]),
)
closures = st.builds("g3, {}, closed".format, st.sampled_from(ENGAGEMENTS))
drawn = st.lists(
    st.one_of(rules, rules, grants, grants, global_grants, closures), min_size=1, max_size=30
)
# The differential test's generator reaches every kind of answer (denies beating allows
# included) far more often than lines drawn one by one; the drawn ones shrink better.
seeded = st.integers(0, 2**32).map(lambda seed: random_policy(random.Random(seed)))
policies = st.one_of(drawn, seeded, seeded)


class Policy:
    """One drawn policy on disk: the gateway's engine and plain pycasbin on the same files."""

    def __init__(self, lines: list[str], closed_by_state: str | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory()
        root = Path(self._dir.name)
        (root / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
        (root / "policy.csv").write_text("\n".join(lines) + "\n")
        source = read_policy(root / "model.conf", root / "policy.csv")
        assert source.errors == ()
        self.engine = PolicyEngine(source)
        # The engagement state closing one engagement must equal the policy saying so.
        extra = [f"g3, {closed_by_state}, closed"] if closed_by_state else []
        (root / "reference.csv").write_text("\n".join([*lines, *extra]) + "\n")
        self.casbin: Any = casbin_enforcer(root / "model.conf", root / "reference.csv")
        self.role_names = self.engine.compiled.role_names

    def close(self) -> None:
        self._dir.cleanup()


def state_fact(closed: str | None, engagement: str) -> ClosedFact | None:
    """The engagement state's fact for ``engagement``: only when it is the closed one."""
    return ClosedFact(engagement, "close_saga", "test") if closed == engagement else None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=policies,
    request=st.tuples(st.sampled_from(DOMAINS), st.sampled_from(PATHS), st.sampled_from(ACTIONS)),
    closed=st.one_of(st.none(), st.sampled_from(ENGAGEMENTS)),
)
def test_who_can_equals_brute_force(
    lines: list[str], request: tuple[str, str, str], closed: str | None
) -> None:
    policy = Policy(lines, closed)
    try:
        answer = who_can(policy.engine, request, state_fact(closed, request[0]))
        expected = {}
        for name in NAMES:
            allowed, rule = policy.casbin.enforce_ex(name, *request)
            if allowed:
                expected[name] = tuple(rule)
        assert {g.name: g.rule.fields for g in answer.grantees} == expected
        for grantee in answer.grantees:
            kind = "group" if grantee.name.startswith("group:") else None
            kind = kind or ("role" if grantee.name in policy.role_names else "subject")
            assert grantee.kind == kind
            if kind == "subject":  # the gateway's own answer for that subject alone agrees
                assert reference_decide(
                    policy.casbin, policy.role_names, grantee.name, (), request
                )[0]
    finally:
        policy.close()


def check_what_can(
    policy: Policy, subject: str, groups: list[str], closed: str | None
) -> Counter[str]:
    """``what_can`` against pycasbin in every engagement; counts what the lists had to do."""
    seen: Counter[str] = Counter()
    for engagement in DOMAINS:
        answer = what_can(
            policy.engine, subject, groups, engagement, state_fact(closed, engagement)
        )
        for path in PATHS:
            for action in ACTIONS:
                request = (engagement, path, action)
                allowed, _ = reference_decide(
                    policy.casbin, policy.role_names, subject, groups, request
                )
                assert answer.permits(path, action) is allowed, (engagement, path, action)
                allows = [a for a in answer.allows if a.rule.matches(path)]
                if any(d.applies(path, action) for d in answer.denies) and any(
                    a.applies(path, action) for a in allows
                ):
                    seen["deny beats allow"] += 1
                if not allowed and any(
                    a.reads_only and a.rule.act in (action, "*") for a in allows
                ):
                    seen["closed: reads only"] += 1
        for permission in (*answer.allows, *answer.denies):
            assert permission.role_chain[0] in (subject, *(f"group:{g}" for g in groups))
            assert permission.role_chain[-1] == permission.rule.sub
        # A closed engagement limits allows to reads, never a deny (an audit found a deny
        # marked reads_only, which permits() then skipped for writes).
        assert not any(d.reads_only for d in answer.denies)
    check_engagements_listed(policy, subject, groups, closed)
    return seen


def check_engagements_listed(
    policy: Policy, subject: str, groups: list[str], closed: str | None
) -> None:
    """Without --engagement, every engagement whose answer differs from "(any other
    engagement)" is listed (one named only by a p line or a close was left out)."""
    listing = engagements_for(policy.engine, subject, groups, None, [closed] if closed else [])
    listed = {engagement for _, engagement in listing}
    other = listing[-1][1]
    fresh = what_can(policy.engine, subject, groups, other)
    for engagement in ENGAGEMENTS:
        if engagement in listed:
            continue
        answer = what_can(
            policy.engine, subject, groups, engagement, state_fact(closed, engagement)
        )
        for path in PATHS:
            for action in ACTIONS:
                assert answer.permits(path, action) is fresh.permits(path, action), (
                    engagement,
                    path,
                    action,
                )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=policies,
    subject=st.sampled_from(USERS + ROLES[:1]),
    groups=st.lists(st.sampled_from(GROUPS), max_size=2, unique=True),
    closed=st.one_of(st.none(), st.sampled_from(ENGAGEMENTS)),
)
def test_what_can_equals_brute_force(
    lines: list[str], subject: str, groups: list[str], closed: str | None
) -> None:
    policy = Policy(lines, closed)
    try:
        check_what_can(policy, subject, groups, closed)
    finally:
        policy.close()


def test_what_can_equals_brute_force_where_it_matters() -> None:
    """Seeded policies: the lists must have had denies and closed engagements to get right."""
    seen: Counter[str] = Counter()
    for seed in range(30):
        rng = random.Random(seed)
        closed = rng.choice([None, *ENGAGEMENTS])
        policy = Policy(random_policy(rng), closed)
        try:
            groups = rng.sample(GROUPS, rng.randint(0, 2))
            seen += check_what_can(policy, rng.choice(USERS), groups, closed)
        finally:
            policy.close()
    assert seen["deny beats allow"] > 0, seen
    assert seen["closed: reads only"] > 0, seen


def test_who_can_on_the_shipped_policy() -> None:
    engine = PolicyEngine.load(PolicySettings(dir=POLICY_DIR))
    answer = who_can(engine, ("acme-2026", "/v1/engagements/acme-2026/findings", "POST"))
    assert [g.name for g in answer.of_kind("subject")] == ["alice", "bob", "rita"]
    assert [g.name for g in answer.of_kind("role")] == [
        "analyst",
        "engagement_lead",
        "records_officer",
    ]
    assert answer.of_kind("group") == []  # group:acme-client is a client viewer: denied
    bob = next(g for g in answer.grantees if g.name == "bob")
    assert bob.role_chain == ("bob", "engagement_lead", "analyst")
    assert bob.rule.location.startswith("policy.csv:")


def test_who_can_in_a_closed_engagement_keeps_only_closed_writers() -> None:
    engine = PolicyEngine.load(PolicySettings(dir=POLICY_DIR))
    answer = who_can(engine, ("initech-2025", "/v1/engagements/initech-2025/findings", "POST"))
    assert [g.name for g in answer.grantees] == ["records_officer", "rita"]
    assert answer.closed is not None
    assert answer.closed.source == "policy"


def test_what_can_marks_reads_only_in_a_closed_engagement() -> None:
    engine = PolicyEngine.load(PolicySettings(dir=POLICY_DIR))
    answer = what_can(engine, "alice", (), "acme-2026", state_fact("acme-2026", "acme-2026"))
    assert answer.allows
    assert all(p.reads_only for p in answer.allows)
    assert {p.rule.act for p in answer.allows} == {"GET"}
    assert answer.permits("/v1/engagements/acme-2026/findings", "GET")
    assert not answer.permits("/v1/engagements/acme-2026/findings", "POST")


def test_what_can_refuses_a_subject_named_like_a_role() -> None:
    engine = PolicyEngine.load(PolicySettings(dir=POLICY_DIR))
    answer = what_can(engine, "security_admin", (), "*")
    assert answer.refused == "principal_is_role"
    assert not answer.permits("/admin/policy", "GET")
