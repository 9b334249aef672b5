"""``PolicyStore``: the policy in force, and the gate every new policy must pass.

The store holds one immutable ``PolicyEngine``; a reload builds the candidate
off the event loop (``asyncio.to_thread``), runs the gate (parse, lint errors,
model check, the admins' test suites in ``<dir>/tests``) and only then swaps
the single reference. Requests read ``store.current`` once per decision, so
each sees either the old or the new policy, never a mix. Any failure keeps the
last good policy, records ``last_error`` (shown by ``GET /admin/policy`` and
``/readyz``) and logs ``policy_reload_rejected``. Reloads are serialised by a
lock. The gate never calls pycasbin's ``enforce()``, so the worker thread cannot
race the loop into CPython gh-106905.

Stable interface (the scale-out helper calls it on a peer's reload notice):
``await store.reload(reason: str) -> ReloadResult``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from app.authz.closed import EngagementState, MemoryEngagementState
from app.authz.policy import Decision, PolicyEngine, source_of
from app.authz.shadow import ShadowPolicy, ShadowStatus, open_shadow
from app.authz.snapshot import Fingerprint, read_snapshot
from app.authz.suite import SuiteError, run_suites
from app.authz.suite_files import checked, parse_suites
from app.core.config import PolicySettings
from app.core.errors import ConfigError, PolicyRejected

log = structlog.get_logger("gateway.policy")

Outcome = Literal["swapped", "unchanged", "rejected"]
ReloadListener = Callable[["ReloadResult"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload attempt did."""

    outcome: Outcome
    reason: str
    revision: str
    previous_revision: str
    tests_run: int
    duration_ms: float
    error: str | None = None
    tests_failed: int = 0
    failures: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReloadError:
    at: float
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """The policy in force and the last failed reload, if any."""

    revision: str
    loaded_at: float
    files: tuple[PolicyFile, ...]
    rules: int
    tests: int
    last_error: ReloadError | None
    last_reload: ReloadResult | None
    shadow: ShadowStatus | None = None
    engagement_state: EngagementStateStatus | None = None


@dataclass(frozen=True, slots=True)
class EngagementStateStatus:
    shared: bool
    synced: bool
    closed: int
    version: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class GatedPolicy:
    engine: PolicyEngine
    tests_run: int
    files: tuple[PolicyFile, ...]
    fingerprint: Fingerprint = ()  # of the files as read: where a watcher starts from


class GateFailed(PolicyRejected):
    """The suites ran and some failed: how many ran, and every failing case."""

    def __init__(self, tests_run: int, failures: tuple[str, ...]) -> None:
        listed = "\n".join(failures)
        super().__init__(f"{len(failures)} of {tests_run} policy test(s) failed:\n{listed}")
        self.tests_run = tests_run
        self.failures = failures


def build_gated(settings: PolicySettings) -> GatedPolicy:
    """Parse, check and test a policy directory; ``PolicyRejected`` says why not.

    Model, policy and suites come from one ``read_snapshot`` (one version of the
    files), and the hashes status shows are of exactly the bytes parsed and tested.
    """
    try:
        snapshot = read_snapshot(settings)
        engine = PolicyEngine(source_of(settings, snapshot))
        cases = checked(*parse_suites(snapshot.suites))
        files = tuple(PolicyFile(str(read.path), read.sha256) for read in snapshot.files)
    except (ConfigError, SuiteError, OSError) as exc:
        raise PolicyRejected(str(exc)) from None
    except Exception as exc:  # a file nobody foresaw: refused, never a crash or a 500
        log.exception("policy_read_failed")
        raise PolicyRejected(f"policy: cannot read {settings.dir}: {type(exc).__name__}") from None
    if not cases:
        # The gate is the suites: with none, any edit would pass it (as `policy test` says).
        raise PolicyRejected(f"policy: no test cases found in {settings.dir}/tests/*.yaml")
    report = run_suites(engine, cases)
    if report.failures:
        raise GateFailed(len(report.results), tuple(f.describe_failure() for f in report.failures))
    return GatedPolicy(engine, len(report.results), files, snapshot.fingerprint)


def build_frozen(settings: PolicySettings) -> GatedPolicy:
    """``build_gated`` with the cyclic GC paused, and the result frozen out of it.

    A 100k-line policy is ~300k GC-tracked objects; a full collection walks them
    all holding the GIL (~250 ms measured here), stalling the event loop whichever
    thread triggers it. Pausing collection while building and then ``gc.freeze()``
    (objects alive now are never scanned again; refcounting still frees them)
    keeps reloads and later requests free of that pause.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        gated = build_gated(settings)
        gc.freeze()
        return gated
    finally:
        if was_enabled:
            gc.enable()


class PolicyStore:
    """Holds the policy in force; ``reload`` swaps it only after the gate passes."""

    def __init__(
        self,
        settings: PolicySettings,
        gated: GatedPolicy,
        shadow: ShadowPolicy | None = None,
    ) -> None:
        self.settings = settings
        self._gated = gated
        self.shadow = shadow
        # Closed engagements outside the policy file; main.py shares them through Redis.
        self.engagements: EngagementState = MemoryEngagementState()
        self._lock = asyncio.Lock()
        self._last_error: ReloadError | None = None
        self._last_reload: ReloadResult | None = None
        self._listeners: list[ReloadListener] = []

    def add_listener(self, listener: ReloadListener) -> None:
        """Call ``listener`` after every reload attempt (metrics, cross-process notices)."""
        self._listeners.append(listener)

    async def _notify(self, result: ReloadResult) -> None:
        for listener in self._listeners:
            try:
                await listener(result)
            except Exception:  # a listener never undoes or fails a reload
                log.exception("policy_reload_listener_failed", reason=result.reason)

    @classmethod
    def open(cls, settings: PolicySettings) -> PolicyStore:
        """Load through the gate at start-up; a failure is a ``ConfigError``."""
        try:
            return cls(settings, build_frozen(settings), open_shadow(settings))
        except PolicyRejected as exc:
            raise ConfigError(str(exc).replace("\n", " ")) from None

    @property
    def current(self) -> PolicyEngine:
        return self._gated.engine

    @property
    def revision(self) -> str:
        return self._gated.engine.revision

    @property
    def files(self) -> tuple[Path, ...]:
        """``PolicyEngine.files`` of the policy in force (the foundation's surface)."""
        return self._gated.engine.files

    @property
    def loaded_at(self) -> float:
        return self._gated.engine.loaded_at

    @property
    def fingerprint(self) -> Fingerprint:
        """``fingerprint_of`` the files as they were read for the policy in force."""
        return self._gated.fingerprint

    def decide(
        self, subject: str, engagement: str, obj: str, action: str, groups: Sequence[str] = ()
    ) -> Decision:
        """Decide on the policy in force (``PolicyEngine.decide``) and the engagement state.

        Then, when a shadow policy is set, decide the same request on it: after the
        live decision is made and logged, and never changing it.
        """
        state = self.engagements.decision_fact(engagement)
        decision = self._gated.engine.decide(subject, engagement, obj, action, groups, state)
        if self.shadow is not None:
            try:
                self.shadow.observe(decision, state)
            except Exception:  # the candidate must never break or change a live answer
                log.exception("decision_shadow_failed")
        return decision

    async def reload_shadow(self) -> None:
        """Load the shadow candidate again (its files changed)."""
        if self.shadow is not None:
            await self.shadow.reload()

    @property
    def status(self) -> PolicyStatus:
        gated = self._gated
        return PolicyStatus(
            revision=gated.engine.revision,
            loaded_at=gated.engine.loaded_at,
            files=gated.files,
            rules=len(gated.engine.compiled.rules),
            tests=gated.tests_run,
            last_error=self._last_error,
            last_reload=self._last_reload,
            shadow=self.shadow.status if self.shadow else None,
            engagement_state=_state_status(self.engagements),
        )

    async def reload(self, reason: str) -> ReloadResult:
        """Build, gate and swap; on any failure keep the last good policy."""
        async with self._lock:
            started = time.perf_counter()
            previous = self._gated.engine.revision
            try:
                gated = await asyncio.to_thread(build_frozen, self.settings)
            except PolicyRejected as exc:
                rejected = self._rejected(reason, previous, exc, started)
                await self._notify(rejected)
                return rejected
            outcome: Outcome = "unchanged" if gated.engine.revision == previous else "swapped"
            replaced = [self._gated]
            if outcome == "swapped" or gated.files != self._gated.files:
                self._gated = gated
            else:
                replaced = [gated]
            del gated
            self._last_error = None
            current = self._gated
            result = ReloadResult(
                outcome, reason, current.engine.revision, previous, current.tests_run, _ms(started)
            )
            self._last_reload = result
            log.info("policy_reloaded", **_fields(result))
            await asyncio.to_thread(_retire, replaced)
            await self._notify(result)
            return result

    def _rejected(
        self, reason: str, previous: str, exc: PolicyRejected, started: float
    ) -> ReloadResult:
        message = exc.detail
        self._last_error = ReloadError(time.time(), reason, message)
        ran, failures = (exc.tests_run, exc.failures) if isinstance(exc, GateFailed) else (0, ())
        result = ReloadResult(
            "rejected", reason, previous, previous, ran, _ms(started), message,
            len(failures), failures,
        )  # fmt: skip
        self._last_reload = result
        log.warning("policy_reload_rejected", **_fields(result))
        return result


def _state_status(state: EngagementState) -> EngagementStateStatus:
    closed = state.closed()
    return EngagementStateStatus(
        state.shared, state.synced, len(closed), state.version, state.last_error
    )


def _retire(holder: list[GatedPolicy]) -> None:
    """Free a policy that is no longer in force here, in a worker, not on the loop.

    ``release`` runs only when this function holds the last reference (a caller
    that kept ``store.current`` from before the swap keeps a working engine).
    """
    engine = holder.pop().engine
    if sys.getrefcount(engine) <= 2:  # the local name and getrefcount's own argument
        engine.compiled.release()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _fields(result: ReloadResult) -> dict[str, object]:
    return {
        "outcome": result.outcome,
        "reason": result.reason,
        "policy_revision": result.revision,
        "previous_revision": result.previous_revision,
        "tests_run": result.tests_run,
        "tests_failed": result.tests_failed,
        "duration_ms": result.duration_ms,
        "error": result.error,
    }
