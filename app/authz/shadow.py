"""Shadow policy: a candidate decided beside the live policy on every request, never enforced.

Set ``policy.shadow_dir`` to a candidate policy directory. After the live
decision is made (and logged), ``ShadowPolicy.observe`` decides the same
request on the candidate with the same engagement state; the answer the caller
gets is always the live one, and nothing the candidate does (even raising) can
change it. A request decided otherwise is a flip: logged as
``decision_shadow_flip`` with both results, rules and revisions, and counted by
direction (``gateway_policy_shadow_flips``, and in ``GET /admin/policy``). The
cost is one more decision on the compiled index, bounded whatever the policy's
size; none once the candidate's revision equals the live one (it was promoted).

The candidate's files are watched like the live ones. A candidate that does not
parse keeps the previous one (or none) and says why in the status; its suites
are run for information only. It becomes live only by being copied into
``policy.dir`` and passing the normal gated reload.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from app.authz.closed import ClosedFact
from app.authz.policy import Decision, PolicyEngine, source_of
from app.authz.snapshot import Fingerprint, read_snapshot
from app.authz.suite import run_suites
from app.authz.suite_files import parse_suites
from app.core.config import PolicySettings
from app.core.errors import ConfigError
from app.core.logging import decision_logger
from app.ops.metrics import count_shadow_flip

log = decision_logger()
DIRECTIONS = ("allow_to_deny", "deny_to_allow")


@dataclass(frozen=True, slots=True)
class ShadowStatus:
    dir: str
    revision: str | None
    loaded_at: float | None
    decisions: int
    flips: dict[str, int]
    tests_run: int
    tests_failed: int
    last_error: str | None


def shadow_settings(settings: PolicySettings) -> PolicySettings | None:
    """The candidate directory read with the live file names, or ``None`` when unset."""
    if settings.shadow_dir is None:
        return None
    return settings.model_copy(update={"dir": settings.shadow_dir, "shadow_dir": None})


class ShadowPolicy:
    """The candidate policy, what it would have decided differently, and why it is not loaded."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.engine: PolicyEngine | None = None
        self.decisions = 0
        self.flips: Counter[str] = Counter({d: 0 for d in DIRECTIONS})
        self.tests_run = 0
        self.tests_failed = 0
        self.last_error: str | None = None
        self.fingerprint: Fingerprint | None = None  # of the files last read whole
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Parse the candidate (else keep the last one); its suites run for information."""
        try:
            snapshot = read_snapshot(self.settings)  # policy and suites of one version
            self.fingerprint = snapshot.fingerprint
            engine = PolicyEngine(source_of(self.settings, snapshot))
        except ConfigError as exc:
            # The candidate is read as a policy directory: name the setting that set it.
            self.last_error = exc.detail.replace("policy.dir:", "policy.shadow_dir:", 1)
            log.warning("policy_shadow_rejected", error=self.last_error)
            return
        except Exception as exc:  # never a crash of the watcher that called us
            self.last_error = f"cannot read the candidate: {type(exc).__name__}"
            log.exception("policy_shadow_rejected", error=self.last_error)
            return
        cases, issues = parse_suites(snapshot.suites)
        if issues:
            self.tests_run, self.tests_failed = 0, len(issues)
        else:
            report = run_suites(engine, cases)
            self.tests_run, self.tests_failed = len(report.results), len(report.failures)
        self.engine, self.last_error = engine, None
        log.info("policy_shadow_loaded", shadow_revision=engine.revision, tests_run=self.tests_run,
                 tests_failed=self.tests_failed)  # fmt: skip

    async def reload(self) -> None:
        """Load the candidate again, off the event loop."""
        async with self._lock:
            await asyncio.to_thread(self.load)

    def observe(self, live: Decision, state: ClosedFact | None) -> None:
        """Decide ``live``'s request on the candidate; log and count a different answer."""
        engine = self.engine
        if engine is None or engine.revision == live.revision:
            return
        self.decisions += 1
        request = (live.engagement, live.obj, live.action)
        verdict = engine.compiled.evaluate(live.subject, live.groups, *request, state is not None)
        if verdict.allowed == live.allowed:
            return  # the common case costs one compiled evaluation, nothing more
        shadow = engine.explain(live.subject, *request, live.groups, state)
        direction = DIRECTIONS[0] if live.allowed else DIRECTIONS[1]
        self.flips[direction] += 1
        count_shadow_flip(direction)
        log.warning(
            "decision_shadow_flip",
            direction=direction,
            subject=live.subject,
            groups=list(live.groups),
            engagement=live.engagement,
            object=live.obj,
            action=live.action,
            live={"decision": _result(live), "reason": live.reason, "rule": _rule(live),
                  "rule_location": live.rule_location, "policy_revision": live.revision},
            shadow={"decision": _result(shadow), "reason": shadow.reason, "rule": _rule(shadow),
                    "rule_location": shadow.rule_location, "policy_revision": shadow.revision},
        )  # fmt: skip

    @property
    def status(self) -> ShadowStatus:
        engine = self.engine
        return ShadowStatus(
            dir=str(self.settings.dir),
            revision=engine.revision if engine else None,
            loaded_at=engine.loaded_at if engine else None,
            decisions=self.decisions,
            flips=dict(self.flips),
            tests_run=self.tests_run,
            tests_failed=self.tests_failed,
            last_error=self.last_error,
        )


def open_shadow(settings: PolicySettings) -> ShadowPolicy | None:
    """The candidate named by ``policy.shadow_dir``, loaded now; ``None`` when unset."""
    candidate = shadow_settings(settings)
    if candidate is None:
        return None
    shadow = ShadowPolicy(candidate)
    shadow.load()
    return shadow


def _result(decision: Decision) -> str:
    return "allow" if decision.allowed else "deny"


def _rule(decision: Decision) -> str | None:
    return ",".join(decision.matched_rule) or None
