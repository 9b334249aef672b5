"""``gateway policy diff``: which decisions a policy change flips.

Requests come from both directories' test suites and, optionally, from a
recorded decision log (the JSON lines the gateway writes, ``event == "decision"``
and ``stage == "authz"``). Each distinct request is decided on the old and the
new policy; those whose answer changes are reported with both matched rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.authz.policy import Decision, PolicyEngine
from app.authz.suite import load_suites


class DecisionLogError(ValueError):
    """A decision log line that cannot be replayed."""


@dataclass(frozen=True, slots=True)
class Probe:
    """One request to decide on both policies, and where it came from."""

    subject: str
    groups: tuple[str, ...]
    engagement: str
    action: str
    path: str
    origin: str

    @property
    def key(self) -> tuple[object, ...]:
        return (self.subject, self.groups, self.engagement, self.action, self.path)


@dataclass(frozen=True, slots=True)
class Flip:
    probe: Probe
    old: Decision
    new: Decision


def probes_from_suites(policy_dir: Path) -> Iterator[Probe]:
    for file, suite in load_suites(policy_dir):
        for case in suite.cases:
            origin = f"{policy_dir}/{file}: {case.name}"
            yield Probe(case.subject, case.groups, case.engagement, case.method, case.path, origin)


def probes_from_log(path: Path) -> Iterator[Probe]:
    """Authorization decisions recorded by the gateway; other lines are skipped."""
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            probe = _probe(text, f"{path.name}:{number}")
            if probe is not None:
                yield probe


def _probe(text: str, origin: str) -> Probe | None:
    if not text.strip():
        return None
    try:
        entry = json.loads(text)
    except json.JSONDecodeError:
        raise DecisionLogError(f"{origin}: not a JSON line") from None
    if not isinstance(entry, dict) or entry.get("event") != "decision":
        return None
    if entry.get("stage") != "authz":
        return None
    try:
        fields = [entry["subject"], entry["engagement"], entry["action"], entry["object"]]
        groups = tuple(entry.get("groups") or ())
    except KeyError as exc:
        raise DecisionLogError(f"{origin}: decision line without {exc}") from None
    if not all(isinstance(value, str) for value in (*fields, *groups)):
        raise DecisionLogError(f"{origin}: decision line with non-text fields")
    subject, engagement, action, obj = fields
    return Probe(subject, groups, engagement, action, obj, origin)


def flips(old: PolicyEngine, new: PolicyEngine, probes: Iterable[Probe]) -> list[Flip]:
    """Distinct requests whose decision differs between ``old`` and ``new``."""
    seen: set[tuple[object, ...]] = set()
    changed = []
    for probe in probes:
        if probe.key in seen:
            continue
        seen.add(probe.key)
        request = (probe.subject, probe.engagement, probe.path, probe.action, probe.groups)
        before, after = old.explain(*request), new.explain(*request)
        if before.allowed != after.allowed:
            changed.append(Flip(probe, before, after))
    return changed
