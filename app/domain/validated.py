"""JSON a service sent, proven to conform to a public model, relayed without re-serialising."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ValidatedJson(Generic[ModelT]):
    """``body`` validates against ``model`` in strict mode, so it is that model's JSON.

    Strict mode admits no coercion (no ``"3"`` for an integer), and the public
    models forbid unknown fields, so the bytes relayed are exactly a document of
    the declared schema; parsing them into the model and dumping it again would
    only cost CPU on every request.
    """

    model: type[ModelT]
    body: bytes

    @classmethod
    def check(cls, model: type[ModelT], body: bytes) -> ValidatedJson[ModelT]:
        """``pydantic.ValidationError`` unless ``body`` is a strict ``model`` document."""
        model.model_validate_json(body, strict=True)
        return cls(model, body)

    def parsed(self) -> ModelT:
        """The model itself, for callers that compose it (lax: it is already valid)."""
        return self.model.model_validate_json(self.body)
