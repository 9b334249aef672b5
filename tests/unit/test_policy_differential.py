"""The compiled decision path gives Casbin's answers: a seeded differential test.

Random policies (allow and deny rules, engagement and ``*`` rules, per-engagement,
``*``-engagement and global roles, inheritance chains, closed engagements,
``closed_writer`` roles, group grants) and random requests; every decision and
matched rule of ``CompiledPolicy`` must equal plain pycasbin ``enforce_ex`` on the
same model file, combined over subject and groups the documented way.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from app.authz.compiled import CompiledPolicy
from app.authz.reference import casbin_enforcer, reference_decide
from app.authz.source import read_policy
from tests.conftest import POLICY_DIR

ROLES = ["analyst", "lead", "viewer", "auditor", "admin", "archivist"]
USERS = ["alice", "bob", "carol", "dana", "erin"]
GROUPS = ["red", "blue", "ops"]
ENGAGEMENTS = ["e1", "e2", "e3", "e4"]
OBJECTS = [
    "/v1/engagements/:engagement/findings",
    "/v1/engagements/:engagement/findings/:finding",
    "/v1/engagements/e1/findings/*",
    "/v1/*",
    "/admin/*",
    "*",
    "/v1/engagements/e2/findings",
    "/v1/report.pdf",
]
PATHS = [
    "/v1/engagements/e1/findings",
    "/v1/engagements/e2/findings",
    "/v1/engagements/e1/findings/f-1",
    "/v1/engagements/e3/findings/f-2",
    "/v1/reportXpdf",
    "/v1/report.pdf",
    "/admin/policy",
    "/other",
]
ACTIONS = ["GET", "POST", "DELETE", "read", "HEAD"]
SEEDS_PER_BLOCK = 15
REQUESTS_PER_POLICY = 120  # 4 blocks x 15 policies x 120 = 7,200 requests


def random_policy(rng: random.Random) -> list[str]:
    """One random policy in the shipped model's vocabulary."""
    lines = []
    for _ in range(rng.randint(3, 25)):
        dom = rng.choice([*ENGAGEMENTS, "*", "*"])
        act = rng.choice([*ACTIONS, "*"])
        eft = rng.choice(["allow", "allow", "allow", "deny"])
        sub = rng.choice([*ROLES, *ROLES, f"group:{rng.choice(GROUPS)}", rng.choice(USERS)])
        lines.append(f"p, {sub}, {dom}, {rng.choice(OBJECTS)}, {act}, {eft}")
    for _ in range(rng.randint(2, 14)):
        who = rng.choice([*USERS, *(f"group:{g}" for g in GROUPS), *ROLES])
        lines.append(f"g, {who}, {rng.choice(ROLES)}, {rng.choice([*ENGAGEMENTS, '*'])}")
    for _ in range(rng.randint(0, 4)):
        lines.append(f"g2, {rng.choice(USERS + ROLES)}, {rng.choice(ROLES)}")
    if rng.random() < 0.6:
        lines.append(f"g2, {rng.choice(ROLES + USERS)}, closed_writer")
    for engagement in rng.sample(ENGAGEMENTS, rng.randint(0, 2)):
        lines.append(f"g3, {engagement}, closed")
    rng.shuffle(lines)
    return lines


def write_policy(directory: Path, lines: list[str]) -> CompiledPolicy:
    (directory / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (directory / "policy.csv").write_text("\n".join(lines) + "\n")
    source = read_policy(directory / "model.conf", directory / "policy.csv")
    assert source.errors == ()
    return CompiledPolicy(source.lines)


def check_seed(tmp_path: Path, seed: int, reasons: Counter[str]) -> None:
    rng = random.Random(seed)
    compiled = write_policy(tmp_path, random_policy(rng))
    enforcer = casbin_enforcer(tmp_path / "model.conf", tmp_path / "policy.csv")
    for _ in range(REQUESTS_PER_POLICY):
        subject = rng.choice(USERS)
        groups = tuple(rng.sample(GROUPS, rng.randint(0, 2)))
        request = (rng.choice([*ENGAGEMENTS, "*"]), rng.choice(PATHS), rng.choice(ACTIONS))
        verdict = compiled.evaluate(subject, groups, *request)
        expected = reference_decide(enforcer, compiled.role_names, subject, groups, request)
        got = (verdict.allowed, verdict.rule.fields if verdict.rule else ())
        assert got == expected, (seed, subject, groups, request)
        reasons[verdict.reason] += 1


@pytest.mark.parametrize("block", range(4))
def test_compiled_path_agrees_with_casbin(tmp_path: Path, block: int) -> None:
    reasons: Counter[str] = Counter()
    for seed in range(block * SEEDS_PER_BLOCK, (block + 1) * SEEDS_PER_BLOCK):
        check_seed(tmp_path, seed, reasons)
    # The generator must reach every kind of answer, or the agreement proves little.
    assert set(reasons) >= {
        "allowed_by_rule",
        "denied_by_rule",
        "no_matching_allow",
        "closed_engagement_read_only",
    }, reasons


@pytest.mark.parametrize("kind", ["g", "g2"])
def test_inheritance_depth_limit_matches_casbin(tmp_path: Path, kind: str) -> None:
    """Casbin's role manager stops 10 levels deep; the compiled walk must stop there too."""
    chain = [f"r{i}" for i in range(14)]
    suffix = ", *" if kind == "g" else ""
    lines = [f"{kind}, {a}, {b}{suffix}" for a, b in zip(["zoe", *chain], chain, strict=False)]
    lines += [f"p, {role}, *, /v1/{role}, GET, allow" for role in chain]
    compiled = write_policy(tmp_path, lines)
    enforcer = casbin_enforcer(tmp_path / "model.conf", tmp_path / "policy.csv")
    answers = []
    for role in chain:
        request = ("e1", f"/v1/{role}", "GET")
        verdict = compiled.evaluate("zoe", (), *request)
        expected = reference_decide(enforcer, compiled.role_names, "zoe", (), request)
        assert (verdict.allowed, verdict.rule.fields if verdict.rule else ()) == expected
        answers.append(verdict.allowed)
    assert answers == [True] * 9 + [False] * 5
