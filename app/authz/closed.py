"""Closed engagements outside the policy file: the engagement state every gateway decides on.

A closed engagement is read-only (``app/authz/compiled.py``). The policy can
close one by hand (``g3, <engagement>, closed``); the close saga and the
engagements service close them for real. Those facts live here, in a snapshot
each process reads on every decision without I/O (a dict lookup), written
through by the close saga and the reopen route and reconciled from the
engagements service (``app/workflows/engagement_state.py``). Decision 0009
weighs this design against the policy pulling closed engagements itself.

``MemoryEngagementState`` serves one process; ``RedisEngagementState``
(``app/authz/closed_redis.py``) shares the facts between processes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import structlog

from app.authz.source import GLOBAL_DOMAIN

log = structlog.get_logger("gateway.engagement_state")


@dataclass(frozen=True, slots=True)
class ClosedFact:
    """Why an engagement counts as closed: ``source`` and a reference a person can follow.

    Sources: ``policy`` (a ``g3`` line; ``ref`` is its ``file:line``), ``close_saga``
    (``ref`` is the close's corr_id, ``by`` the subject), ``engagements_service``
    (found closed there by reconciliation), ``case`` (a suite case or an explain
    request that asks to decide as if closed).
    """

    engagement: str
    source: str
    ref: str = ""
    at: float = 0.0
    by: str = ""

    def describe(self) -> str:
        when = f" at {_iso(self.at)}" if self.at else ""
        if self.source == "policy":
            return f"closed by the policy: g3, {self.engagement}, closed ({self.ref})"
        if self.source == "close_saga":
            return f"closed by the close saga{when} (by {self.by or '?'}, corr_id {self.ref})"
        if self.source == "engagements_service":
            return f"the engagements service reports it closed (reconciled{when})"
        if self.source == NOT_SYNCED:
            return (
                "the engagement state is not loaded yet (no answer from the engagements "
                "service or Redis since start): every engagement counts as closed until it is"
            )
        return f"closed by {self.source}{when} {self.ref}".rstrip()

    def log_fields(self) -> dict[str, str]:
        """The fact as the decision log writes it."""
        fields = {"source": self.source, "ref": self.ref}
        if self.at:
            fields["at"] = _iso(self.at)
        if self.by:
            fields["by"] = self.by
        return fields

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, engagement: str, raw: bytes | str) -> ClosedFact:
        """A stored fact; an unreadable one still counts as closed (fail closed)."""
        try:
            data = json.loads(raw)
            source, ref, by = str(data["source"]), str(data.get("ref", "")), str(data.get("by", ""))
            at = float(data.get("at", 0.0))
        except (ValueError, TypeError, KeyError):
            return cls(engagement, "unreadable_record")
        # A time no clock gives (1e400 reads as inf, NaN, before 1970, past 9999) is no
        # time: the fact stands (still closed) without one. Formatting it raised
        # OverflowError on every decision about the engagement, each then a 500.
        return cls(engagement, source, ref, at if 0.0 <= at < _LAST_TIME else 0.0, by)


# The source of the fact every engagement gets while the state is not loaded (fail closed).
NOT_SYNCED = "engagement_state_not_synced"


_LAST_TIME = 253402300800.0  # 10000-01-01T00:00:00Z: ``datetime`` ends the second before


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class EngagementState:
    """The local snapshot and its reads; subclasses share the writes."""

    shared = False

    def __init__(self) -> None:
        self._closed: dict[str, ClosedFact] = {}
        self.version = 0
        self.synced = False
        self.last_error: str | None = None

    def get(self, engagement: str) -> ClosedFact | None:
        """The closed fact for ``engagement`` or ``None``: no I/O."""
        return self._closed.get(engagement)

    def decision_fact(self, engagement: str) -> ClosedFact | None:
        """What a decision on ``engagement`` takes as its closed fact: the hot path, no I/O.

        Until the state is loaded (``synced``: the engagements service or Redis has
        answered once since start), an engagement it may hold closed cannot be told
        from an open one, so every engagement counts as closed: writes are denied,
        reads stay allowed (fail closed, not open: a restarted gateway whose
        engagements service is down served writes in closed engagements). Not the
        gateway-wide domain ``*``, which no engagement is.
        """
        fact = self._closed.get(engagement)
        if fact is None and not self.synced and engagement != GLOBAL_DOMAIN:
            return ClosedFact(engagement, NOT_SYNCED)
        return fact

    def closed(self) -> dict[str, ClosedFact]:
        return dict(self._closed)

    async def confirmed(self, engagement: str) -> ClosedFact | None:
        """``get`` after reading the shared state again where there is one (I/O): for
        the rare answer that must not rest on a snapshot that may not have heard of a
        change yet. Without a shared state the snapshot is the state."""
        return self.get(engagement)

    def mark_synced(self) -> None:
        self.synced = True
        self.last_error = None

    async def close(self, fact: ClosedFact, *, undone_if_unconfirmed: bool = False) -> None:
        """Record ``fact``; ``ServiceUnavailable`` when the shared state cannot be written.

        ``undone_if_unconfirmed``: the caller undoes its close when this fails (the close
        saga's last step), so a write whose outcome is unknown must not stay applied.
        """
        raise NotImplementedError

    async def reopen(self, engagement: str) -> ClosedFact | None:
        raise NotImplementedError

    async def withdraw(self, fact: ClosedFact) -> None:
        """Remove ``fact`` if it is still the engagement's (an undone close's, never another's);
        ``ServiceUnavailable`` when the shared state cannot answer."""
        raise NotImplementedError

    async def current_version(self) -> int:
        raise NotImplementedError

    async def add_reconciled(self, engagements: Iterable[str], seen_version: int) -> list[str]:
        """Close the given engagements unless something changed since ``seen_version``.

        Reconciliation only adds: a fact read before a concurrent reopen must not
        undo it, and a service that forgets an engagement must not reopen it.
        """
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield


class MemoryEngagementState(EngagementState):
    """One process's closed engagements (no Redis)."""

    def __init__(self, synced: bool = True) -> None:
        super().__init__()
        self.synced = synced

    async def close(self, fact: ClosedFact, *, undone_if_unconfirmed: bool = False) -> None:
        self._closed = {**self._closed, fact.engagement: fact}
        self.version += 1
        log.info("engagement_closed_fact", engagement=fact.engagement, **fact.log_fields())

    async def reopen(self, engagement: str) -> ClosedFact | None:
        previous = self._closed.get(engagement)
        if previous is not None:
            self._closed = {k: v for k, v in self._closed.items() if k != engagement}
            self.version += 1
            log.info("engagement_reopened_fact", engagement=engagement, source=previous.source)
        return previous

    async def withdraw(self, fact: ClosedFact) -> None:
        if self._closed.get(fact.engagement) == fact:
            self._closed = {k: v for k, v in self._closed.items() if k != fact.engagement}
            self.version += 1
            log.warning("engagement_closed_fact_withdrawn", engagement=fact.engagement)

    async def current_version(self) -> int:
        return self.version

    async def add_reconciled(self, engagements: Iterable[str], seen_version: int) -> list[str]:
        if seen_version != self.version:
            return []
        now = time.time()
        added = [e for e in dict.fromkeys(engagements) if e not in self._closed]
        for engagement in added:
            await self.close(ClosedFact(engagement, "engagements_service", "reconciled", now))
        return added
