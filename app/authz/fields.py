"""Request fields as the policy sees them, shared by suites, explain, queries and the admin API.

The engagement of a request is never chosen by whoever asks about it: it is the
``{engagement_id}`` segment of ``/v1/engagements/{engagement_id}/...``, exactly as
the gateway's routes take it (``app/core/config.py`` holds pass-through routes
to the same rule), and ``*`` for every other path (``/admin/...``).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from app.authz.source import ENGAGEMENT, GLOBAL_DOMAIN
from app.core.errors import InvalidPath
from app.edge.paths import normalize_path

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ENGAGEMENT_PREFIX = "/v1/engagements/"
_NAMED_ACTION = re.compile(r"^[a-z][a-z_]{0,31}$")


class FieldError(ValueError):
    """A request field that the gateway would never decide as given."""


def _engagement(value: str) -> str:
    if value != GLOBAL_DOMAIN and not ENGAGEMENT.fullmatch(value):
        raise ValueError("must be an engagement id or *")
    return value


def _decision_path(value: str) -> str:
    """The path as the gateway would decide it: normalised, without the query.

    A fragment anywhere (after the query too) is refused, as the edge refuses it.
    """
    if "#" in value:
        raise ValueError("a request target carries no fragment (#): send the path and query")
    try:
        return normalize_path(value.partition("?")[0])
    except InvalidPath as exc:
        raise ValueError(exc.detail) from None


def check_action(value: str) -> str:
    """An HTTP method in upper case, or a lower-case named action (``read``).

    ``get`` is refused rather than silently denied: no request ever carries it.
    """
    named = _NAMED_ACTION.fullmatch(value) is not None and value.upper() not in HTTP_METHODS
    if value in HTTP_METHODS or named:
        return value
    if value.upper() in HTTP_METHODS:
        raise FieldError(f"HTTP methods are upper case: use {value.upper()!r}, not {value!r}")
    methods = ", ".join(HTTP_METHODS)
    raise FieldError(  # the value is not repeated: the admin API's 422 echoes no input
        f"the action is neither an HTTP method ({methods}) "
        "nor a lower-case named action such as 'read'"
    )


def engagement_of(path: str) -> str:
    """The engagement a request for ``path`` (normalised) is decided in."""
    if not path.startswith(ENGAGEMENT_PREFIX):
        return GLOBAL_DOMAIN
    segment = path[len(ENGAGEMENT_PREFIX) :].partition("/")[0]
    if not ENGAGEMENT.fullmatch(segment):
        raise FieldError(
            "the path's engagement id (the segment after /v1/engagements/) is malformed "
            "(the gateway answers 400)"
        )
    return segment


def resolve_engagement(path: str, given: str | None) -> str:
    """The path's engagement; an explicit one that disagrees is an error, not a what-if."""
    engagement = engagement_of(path)
    if given is not None and given != engagement:
        raise FieldError(
            f"engagement {given!r} disagrees with the path, which the gateway decides in "
            f"{engagement!r}: drop the engagement or fix the path"
        )
    return engagement


def check_closable(engagement: str, flag: str) -> str:
    """An engagement a close can reach: never ``*``, which no engagement is.

    The gateway-wide routes (``/admin/...``) are decided in ``*``, and no close
    (the saga's, a ``g3`` line's, an unloaded state's) ever applies there: a case
    or an explanation decided as if ``*`` were closed answers for a request the
    gateway never decides so (a security admin's reload denied).
    """
    if engagement == GLOBAL_DOMAIN:
        raise FieldError(
            "no close applies to the gateway-wide routes (domain *, /admin/...): the "
            f"gateway decides them as open; drop {flag}"
        )
    return engagement


def _action(value: str) -> str:
    try:
        return check_action(value)
    except FieldError as exc:
        raise PydanticCustomError("invalid_action", str(exc)) from None


# The checks are the validators (their messages say what to change); the schema shows
# the same rules as patterns, for clients generated from it.
_ACTION_PATTERN = rf"^({'|'.join(HTTP_METHODS)}|[a-z][a-z_]{{0,31}})$"
EngagementOrGlobal = Annotated[
    str,
    AfterValidator(_engagement),
    WithJsonSchema({"type": "string", "pattern": rf"^(\*|{ENGAGEMENT.pattern[1:-1]})$"}),
]
DecisionPath = Annotated[str, AfterValidator(_decision_path)]
Action = Annotated[
    str, AfterValidator(_action), WithJsonSchema({"type": "string", "pattern": _ACTION_PATTERN})
]
