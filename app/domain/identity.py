"""Who the caller is, as vouched for by a signing proxy: the shape every stage shares."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.core.frozen import quick_init

# Checked with ``fullmatch``: in Python ``$`` also matches before a final "\n". The
# ``^...$`` text stays for pydantic (Rust regex, where ``$`` is the end) and OpenAPI.
SUBJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
GROUP_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@quick_init
@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: the subject, its groups and the proxy key that signed."""

    subject: str
    groups: tuple[str, ...]
    key_id: str


def parse_groups(value: str | None) -> tuple[str, ...] | None:
    """Comma-separated group names; ``None`` if any name is malformed."""
    if value is None or not value.strip():
        return ()
    groups = tuple(g.strip() for g in value.split(","))
    if not all(GROUP_PATTERN.fullmatch(g) for g in groups):
        return None
    return groups
