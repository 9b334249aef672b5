"""The findings domain: typed calls to the findings service, answers checked against the models."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from app.core.errors import Conflict, DownstreamError
from app.domain.findings import Finding, FindingCreate, FindingList
from app.domain.validated import ValidatedJson
from app.downstream.client import ServiceRegistry, raise_for_client_error

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


class FindingsService:
    """Reads and writes findings on behalf of an authorized caller."""

    def __init__(self, services: ServiceRegistry) -> None:
        self._client = services.get(SERVICE)

    async def list(self, engagement_id: str) -> ValidatedJson[FindingList]:
        response = await self._client.call("GET", f"/engagements/{engagement_id}/findings")
        return _parse(response, FindingList)

    async def get(self, engagement_id: str, finding_id: str) -> ValidatedJson[Finding]:
        path = f"/engagements/{engagement_id}/findings/{finding_id}"
        return _parse(await self._client.call("GET", path), Finding)

    async def create(
        self, engagement_id: str, new: FindingCreate, created_by: str
    ) -> ValidatedJson[Finding]:
        payload: dict[str, Any] = {**new.model_dump(mode="json"), "created_by": created_by}
        path = f"/engagements/{engagement_id}/findings"
        response = await self._client.call("POST", path, json=payload)
        if response.status_code == 409:  # frozen: closing or closed (not a gateway fault: no 502)
            raise Conflict(FROZEN)
        return _parse(response, Finding)
