"""The decision endpoints' guard: the gateway's gate, run on another proxy's request.

``DecisionGuard(mode)`` is the ``Guard`` the ``/v1/decisions`` routes declare.
``GuardedRoute`` runs it before FastAPI reads anything, like every route's guard,
and it runs the same ``Gate`` stages in the same order, but decides the
*original* request the asking proxy will forward itself:

1. authn (``Gate.authenticate``): the decision request's RFC 9421 signature,
   which must also cover the headers that carry the original method and URI
   (nginx, Traefik); for Envoy they are the request's own method and path;
2. target: the original URI normalised and refused on the edge's rules, and
   matched against ``authorizer.routes`` for its engagement
   (``app.authz.targets``); no match is a deny;
3. limit (``Gate.spend_subject``): the subject's quota, as a direct request would
   spend it;
4. authz (``Gate.decide``): the same policy, one decision line (``stage=authz``)
   with ``mode`` and ``decision_id`` bound; once allowed, the engagement's quota
   (``Gate.spend_engagement``, decision 0013).

A refused original request is 403 (what nginx ``auth_request`` passes on; it
turns anything but 401 and 403 into a 500): docs/decisions/0007-decision-endpoint.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from fastapi import Request
from pydantic import ValidationError

from app.api.decision_schemas import Mode, OriginalRequest
from app.api.pipeline import ADMISSION_KEY, Admission, Gate, Guard, Target
from app.authn.asgi import message_from_scope
from app.authn.base import declares_body
from app.authn.keys import SigningKey, load_keyring
from app.authz.source import GLOBAL_DOMAIN
from app.authz.targets import OriginalTarget, RouteTemplates, TargetRefused
from app.core import logcontext
from app.core.config import AuthorizerSettings
from app.core.errors import AccessDenied, ConfigError
from app.core.frozen import quick_init
from app.core.ids import uuid4_hex
from app.core.logging import decision_logger
from app.core.scope import SIGNED_PATH_KEY
from app.edge.paths import ENVOY_DECISION_PREFIX
from app.ops.metrics import count_decision

decision_log = decision_logger()

ENVOY_PREFIX = ENVOY_DECISION_PREFIX
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


GRANT_KEY = "decision_grant"


@quick_init
@dataclass(frozen=True, slots=True)
class Grant:
    """What an allowed decision was about (the identity and decision are the admission's)."""

    mode: Mode
    decision_id: str
    original: OriginalTarget


class DecisionGuard(Guard):
    """The guard of one decision endpoint: the gate, on the original request."""

    def __init__(self, mode: Mode) -> None:
        super().__init__()
        self.mode = mode

    async def run(self, gate: Gate, request: Request) -> Admission:
        """401 unless signed (original headers covered), 403 unless allowed, 429 when spent."""
        authorizer: Authorizer = request.app.state.authorizer
        decision_id = uuid4_hex()
        logcontext.bind(mode=self.mode, decision_id=decision_id)
        message = message_from_scope(request.scope)
        names = authorizer.original_headers(self.mode)
        read_body = request.body if declares_body(message) else _no_body
        identity = await gate.authenticate(message, read_body, require=names or ())
        logcontext.bind(subject=identity.subject, key_id=identity.key_id)
        original = _resolve(authorizer.templates, _original(request, names))
        # resolve() refuses a path's "*": only a template without {engagement_id} has it.
        scoped = original.engagement != GLOBAL_DOMAIN
        target = Target(original.engagement, original.obj, original.action, scoped)
        spent = await gate.spend_subject(identity)
        decision = gate.decide(identity, target)
        rate_headers = await gate.spend_engagement(target, spent)
        admission = Admission(identity, decision, rate_headers, message)
        state = request.scope.setdefault("state", {})
        state[ADMISSION_KEY] = admission
        state[GRANT_KEY] = Grant(self.mode, decision_id, original)
        return admission


async def _no_body() -> bytes:
    return b""


def grant_of(request: Request) -> Grant:
    """The grant the decision guard stored; none is a wiring bug: fail closed."""
    grant: Grant | None = request.scope.get("state", {}).get(GRANT_KEY)
    if grant is None:
        raise RuntimeError(f"{request.url.path}: no decision guard ran")
    return grant


def _original(request: Request, names: tuple[str, str] | None) -> OriginalRequest:
    """The original request from its headers, or from the Envoy path (its own method)."""
    if names is not None:
        method_header, uri_header = names
        if len(request.headers.getlist(method_header)) > 1:
            _refuse("invalid_method", "The original method header is repeated.")
        if len(request.headers.getlist(uri_header)) > 1:
            _refuse("invalid_path", "The original URI header is repeated.")
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


def _resolve(templates: RouteTemplates, original: OriginalRequest) -> OriginalTarget:
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
