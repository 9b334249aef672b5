"""The identity headers a signing proxy sends, and which of them stay on the inbound hop."""

from __future__ import annotations

from collections.abc import Iterable

SUBJECT_HEADER = "x-auth-subject"
GROUPS_HEADER = "x-auth-groups"
# Not identity, but signed with it wherever present: the key a write is deduplicated on.
IDEMPOTENCY_KEY_HEADER = "idempotency-key"

# Headers that only mean something on the inbound hop: a forwarder must never pass
# them downstream as received (the gateway asserts identity downstream itself).
INBOUND_ONLY_HEADERS = frozenset(
    {SUBJECT_HEADER, GROUPS_HEADER, "signature", "signature-input", "content-digest"}
)


def strip_inbound_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The header pairs a forwarder may pass downstream: inbound-only ones removed."""
    return [(name, value) for name, value in headers if name.lower() not in INBOUND_ONLY_HEADERS]
