"""Who the caller is, as vouched for by a signing proxy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SUBJECT_HEADER = "x-auth-subject"
GROUPS_HEADER = "x-auth-groups"
SUBJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
GROUP_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


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
    if not all(GROUP_PATTERN.match(g) for g in groups):
        return None
    return groups


# Headers that only mean something on the inbound hop: a forwarder must never pass
# them downstream as received (the gateway asserts identity downstream itself).
INBOUND_ONLY_HEADERS = frozenset(
    {SUBJECT_HEADER, GROUPS_HEADER, "signature", "signature-input", "content-digest"}
)


def strip_inbound_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The header pairs a forwarder may pass downstream: inbound-only ones removed."""
    return [(name, value) for name, value in headers if name.lower() not in INBOUND_ONLY_HEADERS]
