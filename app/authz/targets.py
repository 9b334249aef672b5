"""What a decision is about, when another proxy asks: the original request's target.

The decision endpoints are asked about a request the gateway never routes itself.
Its URI is treated exactly like the gateway's own paths: split at the first ``?``
(the query is never part of the policy object), normalised and refused on the
edge's rules (``app.edge.paths.normalize_path``), then matched against the
configured route templates (``authorizer.routes``), which say where the
engagement is. A URI that matches no template is denied by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.routing import compile_path

from app.authz.source import ENGAGEMENT, GLOBAL_DOMAIN
from app.core.errors import ConfigError, InvalidPath
from app.core.frozen import quick_init
from app.edge.paths import normalize_path

ENGAGEMENT_PARAM = "engagement_id"
# RFC 9110 method token, restricted to what policy actions look like (upper case).
_METHOD = re.compile(r"^[A-Z][A-Z-]{0,19}$")
MAX_URI_LENGTH = 8192


class TargetRefused(Exception):
    """The original request cannot be decided; ``reason`` goes to the decision log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@quick_init
@dataclass(frozen=True, slots=True)
class OriginalTarget:
    """The policy's view of the original request."""

    engagement: str
    obj: str
    action: str
    raw_path: str
    query: str


@dataclass(frozen=True, slots=True)
class _Template:
    text: str
    regex: re.Pattern[str]


class RouteTemplates:
    """The configured templates, tried in order; the first match names the engagement."""

    def __init__(self, templates: list[str]) -> None:
        self._templates = [_compile(index, text) for index, text in enumerate(templates)]

    def __len__(self) -> int:
        return len(self._templates)

    def resolve(self, method: str, uri: str) -> OriginalTarget:
        """The target of ``method uri``, or ``TargetRefused`` (reason logged, never 500)."""
        if not _METHOD.fullmatch(method):
            raise TargetRefused("invalid_method", "The original method is malformed.")
        if not uri.startswith("/") or len(uri) > MAX_URI_LENGTH:
            raise TargetRefused("invalid_path", "The original URI must be an absolute path.")
        if "#" in uri:  # a fragment is never part of a request target (RFC 9112 3.2)
            raise TargetRefused("invalid_path", "The original URI carries a fragment (#).")
        raw_path, _, query = uri.partition("?")
        try:
            path = normalize_path(raw_path)
        except InvalidPath as exc:
            raise TargetRefused("invalid_path", f"The original URI: {exc.detail}") from None
        one_slash_less = raw_path[:-1] if raw_path.endswith("/") else raw_path
        if path != raw_path and path != one_slash_less:
            # The asking proxy forwards the URI as the client sent it: a service that reads
            # "/a/%2e%2e/b" or "/a//b" otherwise than the gateway would serve another
            # resource than the one decided (decision 0001). One trailing slash is the
            # same resource; "/a//" ends in an empty segment, as "/a//b" has one.
            raise TargetRefused(
                "invalid_path",
                "The original URI is not in canonical form (dot segments, empty segments, "
                "percent-encoded unreserved characters, or lower-case hex in a "
                "percent-escape: %2A, not %2a); send it canonical.",
            )
        for template in self._templates:
            match = template.regex.fullmatch(path)
            if match is not None:
                # A route without {engagement_id} decides in "*"; a path's "*" is no
                # engagement id (it would be decided gateway-wide): malformed, as any other.
                engagement = match.groupdict().get(ENGAGEMENT_PARAM)
                if engagement is None:
                    return OriginalTarget(GLOBAL_DOMAIN, path, method, raw_path, query)
                if not ENGAGEMENT.fullmatch(engagement):
                    raise TargetRefused("invalid_engagement", "The engagement id is malformed.")
                return OriginalTarget(engagement, path, method, raw_path, query)
        raise TargetRefused("no_route", "The original URI matches no configured route.")


def _compile(index: int, text: str) -> _Template:
    try:
        regex, _, _ = compile_path(text)
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"authorizer.routes[{index}]: {exc}") from None
    return _Template(text, regex)
