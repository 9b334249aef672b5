"""Generated Casbin policies of a given size, and the callers the load uses.

The shipped ``policies/policy.csv`` comes first; then, per generated engagement
``eng-NNNNN``, five lines: three staffing lines (analyst, client viewer, lead)
and two engagement-scoped rules (a reports rule and a viewer deny). Every load
caller is an analyst staffed on one engagement, so every request is allowed by
the shipped role rules and each engagement's lines are consulted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "policies"
# The naive gateway's own model and rules: the foundation's, frozen here, so the
# naive row stays what a user would write even when the shipped policy evolves.
NAIVE_SOURCE = Path(__file__).resolve().parent / "naive_policy"
LINES_PER_ENGAGEMENT = 5


def _engagement_lines(i: int) -> list[str]:
    eng = f"eng-{i:05d}"
    return [
        f"g, user-{i:05d}a, analyst, {eng}",
        f"g, user-{i:05d}b, client_viewer, {eng}",
        f"g, user-{i:05d}c, engagement_lead, {eng}",
        f"p, engagement_lead, {eng}, /v1/engagements/{eng}/reports, GET, allow",
        f"p, client_viewer, {eng}, /v1/engagements/{eng}/findings/:finding, GET, deny",
    ]


def engagement_count(total_lines: int, source: Path = SHIPPED) -> int:
    shipped = len(_shipped_rules(source))
    return max(1, (total_lines - shipped) // LINES_PER_ENGAGEMENT)


def _shipped_rules(source: Path = SHIPPED) -> list[str]:
    text = (source / "policy.csv").read_text()
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def write_policy(target: Path, total_lines: int, source: Path = SHIPPED) -> Path:
    """A copy of the shipped policy dir whose policy has about ``total_lines`` lines."""
    # Everything shipped comes along (model, and any policy test suite a reload gate
    # runs), so the generated dir loads wherever the shipped one does.
    shutil.copytree(source, target, dirs_exist_ok=True)
    lines = _shipped_rules(source)
    for i in range(engagement_count(total_lines, source)):
        lines.extend(_engagement_lines(i))
    (target / "policy.csv").write_text("\n".join(lines) + "\n")
    return target


def load_callers(
    total_lines: int, count: int = 64, source: Path = SHIPPED
) -> list[tuple[str, str]]:
    """``count`` allowed (subject, engagement) pairs spread over the whole policy."""
    engagements = engagement_count(total_lines, source)
    step = max(1, engagements // count)
    picks = range(engagements - 1, -1, -step)
    return [(f"user-{i:05d}a", f"eng-{i:05d}") for i in list(picks)[:count]]


def policy_lines(policy_dir: Path) -> int:
    text = (policy_dir / "policy.csv").read_text()
    return sum(1 for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
