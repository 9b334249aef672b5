"""Authorization: the policy in force and the decisions made against it.

``PolicyEngine`` is one immutable, loaded policy: its compiled decision path
(``app.authz.compiled``), its revision (a hash of the files) and where it came
from. Decisions are deny by default: no matching allow, or any matching deny
for the subject or any of its groups, is a no. Every decision through
``decide`` writes one decision log line with fixed fields.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.authz.closed import ClosedFact
from app.authz.compiled import CompiledPolicy, Verdict
from app.authz.snapshot import PolicySnapshot, read_snapshot
from app.authz.source import GLOBAL_DOMAIN, PolicySource, listed, parse_policy
from app.core import logcontext
from app.core.config import PolicySettings
from app.core.errors import ConfigError
from app.core.frozen import quick_init
from app.core.logging import decision_logger

__all__ = ["GLOBAL_DOMAIN", "Decision", "PolicyEngine", "load_source", "source_of"]

decision_log = decision_logger()


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    """One authorization answer and the evidence for it."""

    allowed: bool
    subject: str
    engagement: str
    obj: str
    action: str
    matched_rule: tuple[str, ...]
    revision: str
    groups: tuple[str, ...] = ()
    role_chain: tuple[str, ...] = ()
    reason: str = ""
    rule_location: str | None = None
    closed: ClosedFact | None = None


def load_source(settings: PolicySettings) -> PolicySource:
    """Read and parse the policy files; unreadable or invalid files are a ``ConfigError``."""
    return source_of(settings, read_snapshot(settings))


def source_of(settings: PolicySettings, snapshot: PolicySnapshot) -> PolicySource:
    """Parse the snapshot's model and policy; unreadable or invalid files are a ``ConfigError``."""
    for read in (snapshot.model, snapshot.policy):
        if read.absent:
            raise ConfigError(f"policy.dir: {read.path} is not a readable file")
    model, policy = snapshot.model, snapshot.policy
    if model.data is None or policy.data is None:
        problem = model.problem if model.data is None else policy.problem
        raise ConfigError(f"policy: cannot read {settings.dir}: {problem}")
    source = parse_policy(model.path, model.data, policy.path, policy.data)
    if source.errors:
        shown = listed(source.errors, 5, "; ")
        raise ConfigError(f"policy: cannot load {settings.dir}: {shown}")
    return source


class PolicyEngine:
    """One loaded policy and its revision; decisions are CPU only and never block."""

    def __init__(self, source: PolicySource) -> None:
        # The parsed lines are not kept: the compiled form is all a decision needs.
        self.compiled = CompiledPolicy(source.lines)
        self.revision = source.revision
        self.files: tuple[Path, ...] = (source.model_path, source.policy_path)
        self.loaded_at = time.time()

    @classmethod
    def load(cls, settings: PolicySettings) -> PolicyEngine:
        """Load model and policy; an unreadable or invalid file is a ``ConfigError``."""
        return cls(load_source(settings))

    def explain(
        self,
        subject: str,
        engagement: str,
        obj: str,
        action: str,
        groups: Sequence[str] = (),
        closed: ClosedFact | None = None,
    ) -> Decision:
        """The decision with its evidence, without writing a decision log line.

        ``closed``: the engagement state's fact, if it holds the engagement closed;
        the policy's own ``g3`` line, when there is one, is the fact reported.
        """
        fact = self.closed_fact(engagement) or closed
        verdict = self.compiled.evaluate(subject, groups, engagement, obj, action, fact is not None)
        return self._decision(verdict, subject, tuple(groups), (engagement, obj, action), fact)

    def decide(
        self,
        subject: str,
        engagement: str,
        obj: str,
        action: str,
        groups: Sequence[str] = (),
        closed: ClosedFact | None = None,
    ) -> Decision:
        """Decide and log one request; deny unless an allow matches and no deny does."""
        decision = self.explain(subject, engagement, obj, action, groups, closed)
        log_decision(decision)
        return decision

    def closed_fact(self, engagement: str) -> ClosedFact | None:
        """The policy's own ``g3`` line for ``engagement``, as a fact."""
        location = self.compiled.closed_location(engagement)
        return None if location is None else ClosedFact(engagement, "policy", location)

    def _decision(
        self,
        verdict: Verdict,
        subject: str,
        groups: tuple[str, ...],
        request: tuple[str, str, str],
        closed: ClosedFact | None,
    ) -> Decision:
        rule = verdict.rule
        return Decision(
            allowed=verdict.allowed,
            subject=subject,
            engagement=request[0],
            obj=request[1],
            action=request[2],
            matched_rule=rule.fields if rule else (),
            revision=self.revision,
            groups=groups,
            role_chain=verdict.role_chain,
            reason=verdict.reason,
            rule_location=rule.location if rule else None,
            closed=closed,
        )


def log_decision(decision: Decision) -> None:
    """One decision log line; ``diff --log`` replays these, so ``groups`` is kept too."""
    corr_id = logcontext.current().get("corr_id")
    decision_log.info(
        "decision",
        stage="authz",
        corr_id=corr_id,
        subject=decision.subject,
        groups=list(decision.groups),
        engagement=decision.engagement,
        object=decision.obj,
        action=decision.action,
        decision="allow" if decision.allowed else "deny",
        matched_rule=",".join(decision.matched_rule) or None,
        role_chain=list(decision.role_chain),
        policy_revision=decision.revision,
        reason=decision.reason,
        closed=decision.closed.log_fields() if decision.closed else None,
    )
