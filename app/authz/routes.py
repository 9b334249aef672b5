"""What a policy rule can be asked about: the objects and actions the gateway decides.

Every decided request has an object and an action that come from one of the
gateway's routes: a typed route (its path and methods), a pass-through route (its
path or ``policy_object``, its methods or ``action``), or, in authorizer mode, an
original URI matching one of ``authorizer.routes`` (any method). A ``p`` line
whose object and action no route can produce never applies (``gateway policy lint
--config``, warning ``no_route``): a typo in an allow (the users get 403 and
learn it) or, worse, in a deny (nothing is denied, and nobody notices).

A rule of one engagement (domain not ``*``) on routes decided gateway-wide (the
admin routes) never applies either: their domain is ``*``.

``may_meet`` decides whether some path matches both a rule's ``keyMatch2``
pattern and a route's template, segment by segment. It is conservative: where a
segment is not one of the plain shapes (a whole-segment ``:param`` or ``*``, a
whole-segment ``{param}``, a literal), it assumes they may meet, so the warning
is only given when no path can match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouteShape:
    """The objects one route is decided as (a template), and its actions (None: any).

    ``scoped``: decided in the engagement its path names (an ``{engagement_id}``
    parameter); otherwise gateway-wide, in domain ``*``, where a rule or grant of
    one engagement never applies.
    """

    template: str
    actions: frozenset[str] | None
    origin: str  # "typed", "passthrough" or "authorizer", for messages
    scoped: bool = True


_ENGAGEMENT_PARAM = re.compile(r"{engagement_id(:[^}]*)?}")


def names_engagement(path_template: str) -> bool:
    """Whether requests on this path are decided in the engagement it names."""
    return _ENGAGEMENT_PARAM.search(path_template) is not None


def _is_param(segment: str) -> bool:
    """A whole-segment Starlette parameter taking one segment (``{name}``, ``{id:int}``)."""
    return segment.startswith("{") and segment.endswith("}") and ":path}" not in segment


def _plain(segment: str) -> bool:
    return not any(c in segment for c in "{}:*.()[]\\+?$^|")


def may_meet(pattern: str, template: str) -> bool:
    """Whether some object matches both ``keyMatch2(obj, pattern)`` and ``template``."""
    if pattern == "*":
        return True
    return _meet(pattern.split("/"), template.split("/"))


def _meet(pattern: Sequence[str], template: Sequence[str]) -> bool:
    if not pattern:
        return not template
    head = pattern[0]
    if head == "*":  # "/*" becomes "/.*": any rest, even empty, after the slash
        return bool(template)
    if not template:
        return False
    first = template[0]
    if ":path}" in first or ("{" in first and not _is_param(first)):
        return True  # any rest, or a parameter inside a segment: assume they meet
    if head.startswith(":") and _plain(head[1:]):  # one non-empty segment
        return _meet(pattern[1:], template[1:])
    if not _plain(head):
        return True  # a segment keyMatch2 turns into a regex of another shape: assume
    if _is_param(first):
        return head != "" and _meet(pattern[1:], template[1:])
    return head == first and _meet(pattern[1:], template[1:])


def routes_for(obj: str, act: str, routes: Sequence[RouteShape]) -> list[RouteShape]:
    """The routes whose decided objects and actions the rule ``obj``, ``act`` matches."""
    return [
        route
        for route in routes
        if (act == "*" or route.actions is None or act in route.actions)
        and may_meet(obj, route.template)
    ]
