"""A stub's cap on request bodies: a body over it is refused with ``413``, never held.

A declared ``Content-Length`` over the cap is refused before any of the body is
read; a body of unknown length (chunked) is counted as it is read and refused
once it goes over, so a stub holds at most the cap (and one read) of any body.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from app.core.errors import PayloadTooLarge
from app.core.problems import problem_response

# 32 MiB: above the limits a gateway under test sets (its passthrough tests: 12 MiB a
# route, 32 MiB the edge), so a stub does not refuse first what a gateway limit should.
DEFAULT_MAX_BODY_BYTES = 32 << 20
BODY_TOO_LARGE = "body_too_large"  # the refusal as ``/_seen`` names it


class BodyTooLarge(Exception):
    """A request body went over the stub's cap while it was read."""


def declared_too_large(scope: Scope, cap: int) -> bool:
    """Whether the request declares a ``Content-Length`` over ``cap`` (the server has
    checked the field's syntax: one that is not a number never reaches the app)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip().isdigit() and int(value) > cap
    return False


def capped(receive: Receive, cap: int) -> Receive:
    """``receive`` that raises ``BodyTooLarge`` once the body read so far is over ``cap``."""
    received = 0

    async def capped_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise BodyTooLarge
        return message

    return capped_receive


def too_large(cap: int) -> Response:
    """The refusal, problem+json as every other refusal of a stub."""
    detail = f"The request body is over this stub's limit of {cap} bytes (--max-body-bytes)."
    return problem_response(
        PayloadTooLarge.status_code, PayloadTooLarge.code, PayloadTooLarge.title, detail, None
    )
