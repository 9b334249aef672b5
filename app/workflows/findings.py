"""The findings domain: typed calls to the findings service, answers checked against the models.

A create that carries an ``Idempotency-Key`` is applied at most once per caller,
engagement and key (``app.workflows.idempotency``, the store the close uses): a
retry with the same key and body gets the first finding again (``201``, replayed)
without calling the service; the same key with another body is a 422, and a
retry while the first runs a 409. The service gets a key of its own,
``finding-`` and 48 hex digits of ``sha256(subject, engagement, key, body)``: keys
are chosen by callers, so two callers' equal keys must not meet in the service's
own deduplication, and a key sent again with another body after a failed first
run (the gateway forgets failures) must not get the first body's finding from a
service that applied it after all. With a key the client may retry the POST (a
lost answer is not a second finding on a service that honours keys). Without a
key, a create is not deduplicated (two POSTs, two findings).
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from app.core.errors import Conflict, DownstreamError
from app.domain.findings import Finding, FindingCreate, FindingList
from app.domain.validated import ValidatedJson
from app.downstream.client import ServiceRegistry, raise_for_client_error
from app.downstream.deadline import within
from app.workflows.idempotency import Codec, IdempotencyStore, scoped_key

SERVICE = "findings"
FROZEN = (
    "The engagement is being closed or is closed, so it is read-only: the findings "
    "service takes no new findings. Ask a security admin to reopen it if this one must "
    "be recorded."
)
ModelT = TypeVar("ModelT", bound=BaseModel)


def _parse(response: httpx.Response, model: type[ModelT]) -> ValidatedJson[ModelT]:
    raise_for_client_error(SERVICE, response)
    try:
        return ValidatedJson.check(model, response.content)
    except ValidationError:
        raise DownstreamError(SERVICE, "The findings service sent an invalid answer.") from None


FINDING_CODEC: Codec[ValidatedJson[Finding]] = Codec(
    lambda created: created.body, lambda stored: ValidatedJson.check(Finding, stored)
)


def service_key(subject: str, engagement_id: str, key: str, fingerprint: str) -> str:
    """The key the service sees for a caller's key and body: nothing else meets it there."""
    return scoped_key("finding", subject, engagement_id, key, fingerprint)


class FindingsService:
    """Reads and writes findings on behalf of an authorized caller."""

    def __init__(
        self,
        services: ServiceRegistry,
        store: IdempotencyStore | None = None,
        deadline_seconds: float | None = None,
    ) -> None:
        self._client = services.get(SERVICE)
        self._store = store
        self._deadline = deadline_seconds  # per call of a method (app.downstream.deadline)

    async def list(self, engagement_id: str) -> ValidatedJson[FindingList]:
        with within(self._deadline):
            response = await self._client.call("GET", f"/engagements/{engagement_id}/findings")
        return _parse(response, FindingList)

    async def get(self, engagement_id: str, finding_id: str) -> ValidatedJson[Finding]:
        path = f"/engagements/{engagement_id}/findings/{finding_id}"
        with within(self._deadline):
            response = await self._client.call("GET", path)
        return _parse(response, Finding)

    async def create(
        self, engagement_id: str, new: FindingCreate, created_by: str, key: str | None = None
    ) -> tuple[ValidatedJson[Finding], bool]:
        """``(finding, replayed)``; with ``key``, applied at most once per caller and key."""
        with within(self._deadline):
            return await self._create_once(engagement_id, new, created_by, key)

    async def _create_once(
        self, engagement_id: str, new: FindingCreate, created_by: str, key: str | None
    ) -> tuple[ValidatedJson[Finding], bool]:
        if key is None:
            return await self._create(engagement_id, new, created_by, None), False
        if self._store is None:
            raise RuntimeError("FindingsService needs an idempotency store for keyed creates")
        scope = ("create_finding", created_by, engagement_id, key)
        fingerprint = hashlib.sha256(new.model_dump_json().encode()).hexdigest()
        downstream = service_key(created_by, engagement_id, key, fingerprint)
        return await self._store.run(
            scope,
            fingerprint,
            lambda: self._create(engagement_id, new, created_by, downstream),
            FINDING_CODEC,
        )

    async def _create(
        self, engagement_id: str, new: FindingCreate, created_by: str, key: str | None
    ) -> ValidatedJson[Finding]:
        payload: dict[str, Any] = {**new.model_dump(mode="json"), "created_by": created_by}
        path = f"/engagements/{engagement_id}/findings"
        response = await self._client.call("POST", path, json=payload, idempotency_key=key)
        if response.status_code == 409:  # frozen: closing or closed (not a gateway fault: no 502)
            raise Conflict(FROZEN)
        return _parse(response, Finding)
