"""What every ``gateway policy`` command shares: reading a directory, failing readably."""

from __future__ import annotations

import sys
from pathlib import Path

from app.authz.policy import PolicyEngine
from app.authz.source import PolicySource, read_policy
from app.core.config import PolicySettings
from app.core.errors import ConfigError

DEFAULT_DIR = Path("policies")


def fail(message: str) -> int:
    """Print ``message`` for a person and return exit code 2 (unusable input)."""
    print(f"gateway policy: {message}", file=sys.stderr)
    return 2


def read_source(directory: Path) -> PolicySource:
    """The parsed files, errors included: lint reports them rather than stopping."""
    settings = PolicySettings(dir=directory)
    for path in (settings.model_path, settings.policy_path):
        if not path.is_file():
            raise ConfigError(f"{path} is not a readable file")
    return read_policy(settings.model_path, settings.policy_path)


def load_engine(directory: Path) -> PolicyEngine:
    return PolicyEngine.load(PolicySettings(dir=directory))


def split_groups(value: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in value.split(",") if g.strip())
