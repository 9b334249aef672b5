"""Request bodies as the stubs read them: JSON objects, or a problem+json refusal.

A stub answers a body it cannot use as a real service would (``400`` not JSON,
``422`` not the object it needs), never with a ``500``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


async def json_body(request: Request) -> Any:
    """The body as JSON, whatever its content type; ``400`` when it is not JSON."""
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from None


async def json_object(request: Request, *required: str) -> dict[str, Any]:
    """The body as a JSON object with every ``required`` key, whatever its content type."""
    payload = await json_body(request)
    if not isinstance(payload, dict):
        raise HTTPException(422, "the body must be a JSON object")
    if missing := [key for key in required if key not in payload]:
        raise HTTPException(422, f"the body lacks {', '.join(missing)}")
    return payload


async def parse_model(request: Request, model: type[M]) -> M:
    """The body validated as ``model``: ``400`` when it is not JSON, ``422`` listing why not.

    One that is not an object is the model's own error, listed as every other (it was
    a bare ``422`` of type ``http_error`` with no ``errors``).
    """
    payload = await json_body(request)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
        raise RequestValidationError(errors) from None
