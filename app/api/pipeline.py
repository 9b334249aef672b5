"""Stages 2-4 of every guarded request: authn, rate limit, authz; then the handler.

``GuardedRoute`` (``app.api.routing``) is the route class of every router. When
a route declares a ``Guard`` (``Authorized``, or a pass-through route's own), the
route runs the ``Gate`` *before* FastAPI reads, parses or validates anything of
the request:

1. authn: the signature is verified from the headers alone; only then is the
   body read (bytes, within the edge's cap) and its ``Content-Digest`` checked
   (a streamed body is checked as it streams), and the nonce claimed;
2. limit: the subject's own quota is spent;
3. authz: the policy decides the route's ``Target``, and the decision is logged;
   an allowed request then spends the engagement's shared quota (a refused one
   never does: decision 0013);
4. only then does FastAPI parse and validate the body, solve the other
   dependencies and call the endpoint, whose guards read the ``Admission``
   stored in the request scope.

So a request that fails authn gets 401 whatever its body, a denied one 403
without its body parsed, and a 422 reaches only a caller the policy allowed.
Why a route class rather than a pure-ASGI stage in front of the router, or
FastAPI dependencies: docs/decisions/0006-guards-before-the-body.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request

from app.authn.asgi import message_from_scope
from app.authn.base import Message, declares_body
from app.authn.nonces import NonceStoreUnavailable
from app.authn.service import AuthnService
from app.authz.policy import GLOBAL_DOMAIN, Decision
from app.authz.source import ENGAGEMENT
from app.authz.store import PolicyStore
from app.core import logcontext
from app.core.errors import AccessDenied, AuthenticationFailed, BadRequest
from app.core.frozen import quick_init
from app.core.logging import decision_logger
from app.core.tracing import incoming_fields, record_decision, stage_span
from app.domain.identity import Identity
from app.downstream.propagation import CallContext, bind_call_context
from app.ops.metrics import count_decision, count_signature_failure
from app.ops.ratelimit import BucketState, RateLimitGuard, rate_limit_headers

decision_log = decision_logger()
ADMISSION_KEY = "admission"
# Logged when the nonce store cannot answer (503, fail closed); not a signature reason.
REPLAY_CHECK_UNAVAILABLE = "replay_check_unavailable"

BodyReader = Callable[[], Awaitable[bytes]]


@quick_init
@dataclass(frozen=True, slots=True)
class Target:
    """What the policy decides: (engagement, object, action) for the caller."""

    engagement: str  # the Casbin domain; GLOBAL_DOMAIN outside an engagement
    obj: str
    action: str
    # The engagement came from the request (a path, an original URI): it must be an
    # engagement id, and a "*" there is a malformed one (400), never the gateway-wide
    # domain. False only for a route without an engagement (then GLOBAL_DOMAIN).
    scoped: bool = True

    @property
    def engagement_key(self) -> str | None:
        """The engagement as a rate-limit key: ``None`` when global or malformed."""
        if self.engagement == GLOBAL_DOMAIN or not ENGAGEMENT.fullmatch(self.engagement):
            return None
        return self.engagement


@quick_init
@dataclass(frozen=True, slots=True)
class Admission:
    """What the gate established: who asks, what the policy said, quota headers, and
    the request as authn read it (its fields decoded once: a route reads them there)."""

    identity: Identity
    decision: Decision
    rate_headers: Mapping[str, str]
    message: Message


class Gate:
    """authn -> rate limit -> authz, each logged and counted; raises on any refusal."""

    def __init__(
        self, authn: AuthnService, policy: PolicyStore, rate_limit: Callable[[], RateLimitGuard]
    ) -> None:
        self.authn = authn
        self.policy = policy
        self._rate_limit = rate_limit  # built in the lifespan, read per request

    async def admit(
        self,
        message: Message,
        read_body: BodyReader | None,
        target: Target,
        require: Collection[str] = (),
    ) -> Admission:
        """The whole gate for one request; ``read_body`` is ``None`` for a streamed body.

        Each stage is a span of its own (``stage_span``; a no-op with tracing off),
        opened by the stage's method, so callers of one stage get its span too.
        ``require``: components the signature must also cover (``authenticate``).
        """
        identity = await self.authenticate(message, read_body, require)
        # Bound now, so a 429 or a 403 (its request_rejected and request_completed
        # lines) names who was refused, as the decision line does.
        logcontext.bind(subject=identity.subject, key_id=identity.key_id)
        spent = await self.spend_subject(identity)
        decision = self.decide(identity, target)
        rate_headers = await self.spend_engagement(target, spent)
        return Admission(identity, decision, rate_headers, message)

    async def authenticate(
        self, message: Message, read_body: BodyReader | None, require: Collection[str] = ()
    ) -> Identity:
        """The signed identity, accepted once; 401 (reason logged) or 503 (replay check down).

        The MAC is verified from the headers before a byte of the body is read;
        a streamed body (``read_body`` is ``None``) has its digest checked as it
        passes (``app.workflows.passthrough``). ``require``: components the
        signature must also cover (the decision endpoints' original headers, a
        route's ``Idempotency-Key``), else 401 ``component_missing``.
        """
        with stage_span("authn"):
            return await self._authenticate(message, read_body, require)

    async def _authenticate(
        self, message: Message, read_body: BodyReader | None, require: Collection[str]
    ) -> Identity:
        try:
            return await self.authn.authenticate_message(message, read_body, require=require)
        except AuthenticationFailed as exc:
            decision_log.info("decision", stage="authn", decision="deny", reason=exc.reason)
            count_signature_failure(exc.reason)
            record_decision(False, exc.reason)
            raise
        except NonceStoreUnavailable:
            decision_log.warning(
                "decision", stage="authn", decision="deny", reason=REPLAY_CHECK_UNAVAILABLE
            )
            count_signature_failure(REPLAY_CHECK_UNAVAILABLE)
            record_decision(False, REPLAY_CHECK_UNAVAILABLE)
            raise

    async def spend_subject(self, identity: Identity) -> list[BucketState]:
        """Stage 3: spend the caller's own quota (429 when spent), before the policy."""
        with stage_span("rate_limit"):
            guard = self._rate_limit()
            if not guard.enabled:
                return []
            return await guard.spend_subject(identity.subject)

    async def spend_engagement(
        self, target: Target, spent: Sequence[BucketState]
    ) -> dict[str, str]:
        """After the policy allowed: the engagement's shared quota; ``RateLimit`` headers
        of every bucket spent, or 429. A request the policy refused never gets here, so
        a caller not staffed on an engagement cannot spend its quota (decision 0013)."""
        guard = self._rate_limit()  # a reload may have replaced it since spend_subject
        if not guard.enabled or not guard.limits(target.engagement_key):  # nothing to spend
            return rate_limit_headers(spent)
        with stage_span("rate_limit"):
            return await guard.spend_engagement(target.engagement_key, spent)

    def decide(self, identity: Identity, target: Target) -> Decision:
        """The policy's decision on ``target`` (logged); 400 for a malformed engagement, 403."""
        with stage_span("authz"):
            return self._decide(identity, target)

    def _decide(self, identity: Identity, target: Target) -> Decision:
        engagement = target.engagement
        if target.scoped and not ENGAGEMENT.fullmatch(engagement):
            raise BadRequest("The engagement id is malformed.")
        if not target.scoped and engagement != GLOBAL_DOMAIN:  # a wiring bug: fail closed
            raise RuntimeError(f"an unscoped target in engagement {engagement!r}")
        logcontext.bind(engagement=engagement)
        decision = self.policy.decide(
            identity.subject, engagement, target.obj, target.action, identity.groups
        )
        count_decision("allow" if decision.allowed else "deny", decision.reason)
        record_decision(
            decision.allowed, decision.reason, decision.matched_rule, decision.revision, engagement
        )
        if not decision.allowed:
            raise AccessDenied("The policy does not allow this request.")
        return decision


TargetOf = Callable[[Request], Target]


def path_target(request: Request) -> Target:
    """The default target: the path's engagement (or ``*``), the normalised path, the method.

    ``*`` is the domain of a route without an engagement, never a path's value: a path
    segment ``*`` is a malformed engagement id like any other (400 once the caller is
    authenticated), not the gateway-wide domain, where no engagement's rules, denies or
    closed state apply.
    """
    engagement = request.path_params.get("engagement_id")
    if engagement is None:
        return Target(GLOBAL_DOMAIN, request.scope["path"], request.method, scoped=False)
    return Target(engagement, request.scope["path"], request.method)


class Guard:
    """A route's declared guard: the gate runs for it before the body is touched.

    Declared as a dependency (``Authorized``, or a pass-through route's own
    ``Guard``) so a reader sees it in the route's signature; ``GuardedRoute``
    finds it there and runs the gate first. Solving the dependency itself only
    reads the ``Admission`` the gate stored, and fails closed if there is none.
    """

    def __init__(
        self,
        target: TargetOf = path_target,
        *,
        streamed: bool = False,
        signed_if_present: tuple[str, ...] = (),
    ) -> None:
        self.target = target
        self.streamed = streamed
        # Fields the route acts on (a close's or a create's Idempotency-Key): when the
        # request carries one, the signature must cover it, or anyone between the
        # proxy and the gateway could set it (replaying another result of the caller).
        self.signed_if_present = signed_if_present

    async def __call__(self, request: Request) -> Decision:
        return admission_of(request).decision

    async def run(self, gate: Gate, request: Request) -> Admission:
        """Run the gate for ``request``; store and return its admission."""
        message = message_from_scope(request.scope)
        read_body: BodyReader | None = None  # streamed: checked as it passes
        if not self.streamed:
            read_body = request.body if declares_body(message) else _no_body
        require = [n for n in self.signed_if_present if message.header(n) is not None] or ()
        admission = await gate.admit(message, read_body, self.target(request), require)
        for name in require:
            if len(message.headers[name]) > 1:
                # Signed joined ("a, b") but read as one by the route: refused, after
                # the gate, so only an allowed caller learns it.
                field = "-".join(part.capitalize() for part in name.split("-"))
                raise BadRequest(f"Send one {field} field, not several.")
        request.scope.setdefault("state", {})[ADMISSION_KEY] = admission
        decision = admission.decision
        scoped = None if decision.engagement == GLOBAL_DOMAIN else decision.engagement
        trace = incoming_fields(
            message.headers.get("traceparent", ()), message.headers.get("tracestate", ())
        )
        bind_call_context(CallContext(admission.identity, scoped, *trace))
        return admission


async def _no_body() -> bytes:
    return b""


def admission_of(request: Request) -> Admission:
    """The admission the gate stored; a route without one is a wiring bug: fail closed."""
    admission: Admission | None = request.scope.get("state", {}).get(ADMISSION_KEY)
    if admission is None:
        raise RuntimeError(f"{request.url.path}: a guard was read but the gate did not run")
    return admission
