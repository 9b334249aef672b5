"""Authorization: the Casbin policy in force and the decisions made against it.

``PolicyEngine`` owns one enforcer loaded from ``policies/`` and the policy's
revision (a hash of the files), so every decision can say which policy made it.
Decisions are deny by default: no matching allow, or any matching deny, is a no.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import casbin
import structlog

from app.core.config import PolicySettings
from app.core.errors import ConfigError

GLOBAL_DOMAIN = "*"
decision_log = structlog.get_logger("gateway.decision")


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


def _reason(decision: Decision) -> str:
    if decision.allowed:
        return "allowed_by_rule"
    return "denied_by_rule" if decision.matched_rule else "no_matching_allow"


def policy_revision(*files: Path) -> str:
    """A short content hash of the policy files, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class PolicyEngine:
    """The loaded policy and its revision; decisions run on the event loop (CPU only)."""

    def __init__(self, enforcer: casbin.Enforcer, revision: str, files: tuple[Path, ...]) -> None:
        self._enforcer = enforcer
        self.revision = revision
        self.files = files
        self.loaded_at = time.time()

    @classmethod
    def load(cls, settings: PolicySettings) -> PolicyEngine:
        """Load model and policy; an unreadable or invalid file is a ``ConfigError``."""
        files = (settings.model_path, settings.policy_path)
        for path in files:
            if not path.is_file():
                raise ConfigError(f"policy.dir: {path} is not a readable file")
        try:
            enforcer = casbin.Enforcer(str(files[0]), str(files[1]))
        except Exception as exc:  # pycasbin raises bare Exceptions for syntax errors
            raise ConfigError(f"policy: cannot load {files[0]} / {files[1]}: {exc}") from None
        return cls(enforcer, policy_revision(*files), files)

    def decide(self, subject: str, engagement: str, obj: str, action: str) -> Decision:
        """Decide and log one request; deny unless an allow matches and no deny does."""
        allowed, explain = self._enforcer.enforce_ex(subject, engagement, obj, action)
        decision = Decision(
            allowed=bool(allowed),
            subject=subject,
            engagement=engagement,
            obj=obj,
            action=action,
            matched_rule=tuple(str(v) for v in explain),
            revision=self.revision,
        )
        decision_log.info(
            "decision",
            stage="authz",
            decision="allow" if decision.allowed else "deny",
            subject=subject,
            engagement=engagement,
            object=obj,
            action=action,
            matched_rule=",".join(decision.matched_rule) or None,
            policy_revision=self.revision,
            reason=_reason(decision),
        )
        return decision
