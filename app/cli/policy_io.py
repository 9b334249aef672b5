"""What every ``gateway policy`` command shares: reading a directory, failing readably.

A directory is read as the gateway's reload reads it: one ``read_snapshot``
(model, policy and every suite of one version, read again if any changed while
being read), and everything a command parses, tests or hashes comes from those
bytes. Reading the files one by one, ``policy test`` could test one version's
policy against another's suites (an edit, or a deploy tool's directory swap,
landing between the reads) and report as passed a revision whose own suites fail.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from app.authz.policy import PolicyEngine, source_of
from app.authz.snapshot import ATTEMPTS, PolicySnapshot, try_snapshot
from app.authz.source import PolicySource, parse_policy
from app.authz.suite_files import PolicyCase, checked, parse_suites
from app.core.config import PolicySettings
from app.core.errors import ConfigError

DEFAULT_DIR = Path("policies")


def fail(message: str) -> int:
    """Print ``message`` for a person and return exit code 2 (unusable input)."""
    print(f"gateway policy: {message}", file=sys.stderr)
    return 2


@dataclass(frozen=True, slots=True)
class PolicyRead:
    """One version of a policy directory: its files' bytes and the policy parsed from them."""

    snapshot: PolicySnapshot
    engine: PolicyEngine

    def cases(self) -> list[PolicyCase]:
        """The suites' cases of this version, or ``SuiteError`` listing every problem."""
        return checked(*parse_suites(self.snapshot.suites))

    def files_lines(self) -> list[str]:
        """Each file with the sha256 ``GET /admin/policy`` shows for it once loaded."""
        return [f"  {read.path}: sha256 {read.sha256}" for read in self.snapshot.files]


def snapshot_of(directory: Path) -> PolicySnapshot:
    """One version of ``directory``'s files; ``ConfigError`` when they kept changing."""
    snapshot = try_snapshot(PolicySettings(dir=directory))
    if snapshot is None:
        raise ConfigError(
            f"{directory}: the files changed while being read ({ATTEMPTS} times): "
            "nothing was used; run the command again once they have settled"
        )
    return snapshot


def read_directory(directory: Path) -> PolicyRead:
    """The policy of one version of ``directory``; unusable files are a ``ConfigError``."""
    snapshot = snapshot_of(directory)
    return PolicyRead(snapshot, PolicyEngine(source_of(PolicySettings(dir=directory), snapshot)))


def load_engine(directory: Path) -> PolicyEngine:
    return read_directory(directory).engine


def read_source(snapshot: PolicySnapshot) -> PolicySource:
    """The snapshot's model and policy parsed, errors included: lint reports them."""
    model, policy = snapshot.model, snapshot.policy
    if model.data is None or policy.data is None:
        bad = model if model.data is None else policy
        why = "is not a readable file" if bad.absent else f"cannot be read: {bad.problem}"
        raise ConfigError(f"{bad.path} {why}")
    return parse_policy(model.path, model.data, policy.path, policy.data)


def split_groups(value: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in value.split(",") if g.strip())
