"""``gateway policy diff``: which decisions a policy change flips.

Requests come from both directories' test suites and, optionally, from a
recorded log: the gateway's stdout (JSON lines mixed with anything else, each
line possibly prefixed, as ``docker compose logs`` does) or its decision-log
file. Lines that are not authorization decisions are skipped and counted, never
fatal. Each distinct request is decided on the old and the new policy, with the
engagement state the log recorded (a closed fact that did not come from the
policy itself); those whose answer changes are reported with both rules.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.authz.closed import ClosedFact
from app.authz.policy import Decision, PolicyEngine
from app.authz.suite_files import PolicyCase

FIELDS = ("subject", "engagement", "action", "object")


@dataclass(frozen=True, slots=True)
class Probe:
    """One request to decide on both policies, and where it came from."""

    subject: str
    groups: tuple[str, ...]
    engagement: str
    action: str
    path: str
    origin: str
    closed: ClosedFact | None = None

    @property
    def key(self) -> tuple[object, ...]:
        closed = self.closed is not None
        return (self.subject, self.groups, self.engagement, self.action, self.path, closed)


@dataclass(frozen=True, slots=True)
class Flip:
    probe: Probe
    old: Decision
    new: Decision


@dataclass
class LogReading:
    """The decisions found in a log, and how many lines were skipped and why."""

    probes: list[Probe] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self, name: str) -> str:
        text = f"read {len(self.probes)} decision(s) from {name}"
        total = sum(self.skipped.values())
        if not total:
            return text
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return f"{text}; skipped {total} line(s) that are not authz decisions ({why})"


def probes_from_suites(policy_dir: Path, cases: Sequence[PolicyCase]) -> Iterator[Probe]:
    """The requests of ``cases``, read from ``policy_dir``'s suites (with its policy)."""
    for case in cases:
        origin = f"{policy_dir}/{case.location}: {case.name}"
        closed = ClosedFact(case.engagement, "case", case.location) if case.closed else None
        yield Probe(
            case.subject, case.groups, case.engagement, case.method, case.path, origin, closed
        )


def read_log(path: Path) -> LogReading:
    """Every authorization decision in ``path``; ``OSError`` only if it cannot be read."""
    reading = LogReading()
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            probe = _probe(text, f"{path.name}:{number}", reading.skipped)
            if probe is not None:
                reading.probes.append(probe)
    return reading


def _json_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        entry = json.loads(text[start:])
    # Nested deeper than the parser recurses (RecursionError), or an integer longer than
    # Python converts (ValueError, of which JSONDecodeError is one): not a decision line.
    except (ValueError, RecursionError):
        return None
    return entry if isinstance(entry, dict) else None


def _probe(text: str, origin: str, skipped: Counter[str]) -> Probe | None:
    entry = _json_object(text)
    if entry is None:
        skipped["not JSON"] += 1
        return None
    event = entry.get("event")
    if event != "decision" and (event is not None or "decision" not in entry):
        skipped["other events"] += 1  # a file sink's line may carry the fields without event
        return None
    if entry.get("stage", "authz") != "authz":
        skipped[f"{entry.get('stage')} decisions"] += 1
        return None
    values = [entry.get(name) for name in FIELDS]
    groups = entry.get("groups") or []
    if not all(isinstance(v, str) for v in values) or not isinstance(groups, list):
        skipped["incomplete decisions"] += 1
        return None
    if not all(isinstance(g, str) for g in groups):
        skipped["incomplete decisions"] += 1
        return None
    subject, engagement, action, obj = (str(v) for v in values)
    return Probe(subject, tuple(groups), engagement, action, obj, origin, _closed(entry))


def _closed(entry: dict[str, Any]) -> ClosedFact | None:
    """The engagement state the decision saw, unless the policy itself closed it."""
    closed = entry.get("closed")
    if not isinstance(closed, dict) or closed.get("source") in (None, "policy"):
        return None
    return ClosedFact(str(entry["engagement"]), str(closed["source"]), str(closed.get("ref", "")))


def flips(old: PolicyEngine, new: PolicyEngine, probes: Iterable[Probe]) -> list[Flip]:
    """Distinct requests whose decision differs between ``old`` and ``new``."""
    seen: set[tuple[object, ...]] = set()
    changed = []
    for probe in probes:
        if probe.key in seen:
            continue
        seen.add(probe.key)
        request = (probe.subject, probe.engagement, probe.path, probe.action, probe.groups)
        before = old.explain(*request, closed=probe.closed)
        after = new.explain(*request, closed=probe.closed)
        if before.allowed != after.allowed:
            changed.append(Flip(probe, before, after))
    return changed
