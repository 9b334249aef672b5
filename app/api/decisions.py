"""The decision endpoints' guard: the gateway's stages, run on another proxy's request.

``DecisionGuard(mode)`` is the authentication and engagement/RBAC guard of the
``/v1/decisions`` routes. It runs the stages every route runs, in the same order,
with the same functions, but decides the *original* request the asking proxy
will forward itself:

1. authn: the decision request's RFC 9421 signature (``authenticate_request``),
   which must also cover the headers that carry the original method and URI
   (nginx, Traefik); for Envoy they are the request's own method and path;
2. target: the original URI normalised and refused on the edge's rules, and
   matched against ``authorizer.routes`` for its engagement
   (``app.authz.targets``); no match is a deny;
3. limit: the subject's and the engagement's rate-limit quota, as a direct call
   would spend it;
4. authz: the same policy, one decision line (``stage=authz``) with ``mode`` and
   ``decision_id`` bound.

A refused original request is 403 (what nginx ``auth_request`` passes on; it
turns anything but 401 and 403 into a 500). Built on today's stage functions of
``app.api.deps``; when ``app.api.pipeline.Gate`` lands, steps 1, 3 and 4 become
its ``authenticate``, ``spend`` and ``decide``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import NoReturn

import structlog
from fastapi import Request
from pydantic import ValidationError

from app.api.decision_schemas import Mode, OriginalRequest
from app.api.deps import authenticate_request
from app.authn.keys import SigningKey, load_keyring
from app.authz.policy import GLOBAL_DOMAIN, Decision
from app.authz.store import PolicyStore
from app.authz.targets import RouteTemplates, Target, TargetRefused
from app.core.config import AuthorizerSettings
from app.core.errors import AccessDenied, ConfigError
from app.core.scope import SIGNED_PATH_KEY
from app.domain.identity import Identity
from app.ops.metrics import count_decision
from app.ops.ratelimit import RateLimitGuard
from app.workflows.passthrough import declares_body

decision_log = structlog.get_logger("gateway.decision")

ENVOY_PREFIX = "/v1/decisions/envoy"
TRAEFIK_METHOD = "x-forwarded-method"
TRAEFIK_URI = "x-forwarded-uri"


@dataclass(frozen=True, slots=True)
class Authorizer:
    """What the decision endpoints need from the settings, built once at start-up."""

    templates: RouteTemplates
    method_header: str
    uri_header: str
    identity_key: SigningKey | None

    @classmethod
    def from_settings(cls, settings: AuthorizerSettings) -> Authorizer:
        key = None
        if settings.identity_signing_key is not None:
            spec = settings.identity_signing_key
            try:
                key = load_keyring([spec]).get(spec.id)
            except ConfigError as exc:
                where = "authorizer.identity_signing_key"
                raise ConfigError(exc.detail.replace("signing.keys[0]", where)) from None
        return cls(
            RouteTemplates(settings.routes), settings.method_header, settings.uri_header, key
        )

    def original_headers(self, mode: Mode) -> tuple[str, str] | None:
        """The (method, URI) header names of ``mode``; Envoy sends neither."""
        if mode == "nginx":
            return self.method_header, self.uri_header
        if mode == "traefik":
            return TRAEFIK_METHOD, TRAEFIK_URI
        return None


@dataclass(frozen=True, slots=True)
class Grant:
    """An allowed original request and the evidence for it."""

    mode: Mode
    decision_id: str
    identity: Identity
    target: Target
    decision: Decision
    rate_headers: dict[str, str]


class DecisionGuard:
    """The authentication and engagement/RBAC guard of one decision endpoint."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    async def __call__(self, request: Request) -> Grant:
        """401 unless signed (original headers covered), 403 unless allowed, 429 when spent."""
        authorizer: Authorizer = request.app.state.authorizer
        decision_id = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(mode=self.mode, decision_id=decision_id)
        names = authorizer.original_headers(self.mode)
        body = await request.body() if declares_body(request) else b""
        identity = await authenticate_request(request, body, require=names or ())
        target = _target(authorizer.templates, _original(request, names))
        rate_headers = await _spend(request, identity, target)
        decision = _decide(request, identity, target)
        return Grant(self.mode, decision_id, identity, target, decision, rate_headers)


def _original(request: Request, names: tuple[str, str] | None) -> OriginalRequest:
    """The original request from its headers, or from the Envoy path (its own method)."""
    if names is not None:
        method, uri = (request.headers.get(name, "").strip(" \t") for name in names)
    else:
        method = request.method
        raw: str = request.scope["state"].get(SIGNED_PATH_KEY, "")
        if not raw.startswith(ENVOY_PREFIX + "/") and raw != ENVOY_PREFIX:
            _refuse("invalid_path", "The original URI must follow the Envoy path prefix.")
        query = request.scope.get("query_string", b"").decode("latin-1")
        uri = (raw[len(ENVOY_PREFIX) :] or "/") + (f"?{query}" if query else "")
    try:
        return OriginalRequest(method=method, uri=uri)
    except ValidationError as exc:
        if exc.errors()[0]["loc"][0] == "method":
            _refuse("invalid_method", "The original method is malformed.")
        _refuse("invalid_path", "The original URI is malformed.")


def _target(templates: RouteTemplates, original: OriginalRequest) -> Target:
    try:
        return templates.resolve(original.method, original.uri)
    except TargetRefused as exc:
        path = original.uri.partition("?")[0]
        _refuse(exc.reason, exc.detail, action=original.method, object=path)


def _refuse(reason: str, detail: str, **fields: str) -> NoReturn:
    """Deny an original request that cannot be decided: logged and counted like a decision."""
    decision_log.info("decision", stage="authz", decision="deny", reason=reason, **fields)
    count_decision("deny", reason)
    raise AccessDenied(detail)


async def _spend(request: Request, identity: Identity, target: Target) -> dict[str, str]:
    guard: RateLimitGuard = request.app.state.rate_limit
    if not guard.enabled:
        return {}
    engagement = None if target.engagement == GLOBAL_DOMAIN else target.engagement
    return await guard.spend(identity.subject, engagement)


def _decide(request: Request, identity: Identity, target: Target) -> Decision:
    structlog.contextvars.bind_contextvars(engagement=target.engagement)
    policy: PolicyStore = request.app.state.policy
    decision = policy.decide(
        identity.subject, target.engagement, target.obj, target.action, identity.groups
    )
    count_decision("allow" if decision.allowed else "deny", decision.reason)
    if not decision.allowed:
        raise AccessDenied("The policy does not allow this request.")
    return decision
