"""Decision endpoints: may a request that another proxy forwards itself pass?

One route per proxy contract (nginx ``auth_request``, Traefik ``forwardAuth``,
the Envoy ``ext_authz`` HTTP service), each behind ``DecisionGuard``. An allowed
request gets 200 with the headers the proxy copies upstream; anything else is
401, 403 or 429 problem+json. See app/api/docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.api.decision_schemas import DecisionAnswer
from app.api.decisions import Authorizer, DecisionGuard, Grant, grant_of
from app.api.pipeline import admission_of
from app.api.routing import GuardedRoute
from app.api.schemas import Problem
from app.authn.base import Message
from app.authn.identity import GROUPS_HEADER, SUBJECT_HEADER
from app.authz.policy import GLOBAL_DOMAIN, Decision
from app.domain.identity import Identity
from app.downstream.propagation import ENGAGEMENT_HEADER, signature_fields

router = APIRouter(route_class=GuardedRoute, prefix="/v1/decisions", tags=["decisions"])

# Every method a proxy may ask with: nginx and Traefik use GET, Envoy the original one.
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DECISION_ID_HEADER = "x-gateway-decision-id"
REVISION_HEADER = "x-gateway-policy-revision"
IDENTITY_LABEL = "gateway"
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (401, 403, 408, 413, 429, 503)
}

# The guards: GuardedRoute runs each before FastAPI reads anything (app.api.routing).
NginxDecision = Annotated[Decision, Depends(DecisionGuard("nginx"))]
TraefikDecision = Annotated[Decision, Depends(DecisionGuard("traefik"))]
EnvoyDecision = Annotated[Decision, Depends(DecisionGuard("envoy"))]


async def nginx_decision(decision: NginxDecision, request: Request) -> Response:
    """The original request is in the configured method and URI headers."""
    return answer(decision, request)


async def traefik_decision(decision: TraefikDecision, request: Request) -> Response:
    """The original request is in X-Forwarded-Method and X-Forwarded-Uri."""
    return answer(decision, request)


async def envoy_decision(decision: EnvoyDecision, request: Request) -> Response:
    """The original request is this request: its method, and its path after the prefix."""
    return answer(decision, request)


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "schema": {"type": "string"},
            "description": description}  # fmt: skip


def _answer_headers() -> dict[str, Any]:
    """The 200's headers, for the proxy to copy to the upstream (decisions.md)."""
    described = {
        SUBJECT_HEADER: "the signed subject",
        GROUPS_HEADER: "the signed groups, comma-separated (empty: none)",
        ENGAGEMENT_HEADER: "the engagement decided in (empty: gateway-wide)",
        DECISION_ID_HEADER: "the decision's id, as in the decision log",
        REVISION_HEADER: "the policy revision that decided",
    }
    return {name: {"description": text, "schema": {"type": "string"}}
            for name, text in described.items()}  # fmt: skip


# What each mode's schema says beyond FastAPI's own: the original request's carriers
# (nginx's are the defaults of authorizer.method_header / uri_header) and the headers
# of the 200. Every method is answered (decisions.md); the schema shows GET.
_NGINX = [
    _header("X-Original-Method", "the original method (authorizer.method_header); signed"),
    _header("X-Original-URI", "the original path and query (authorizer.uri_header); signed"),
]
_TRAEFIK = [
    _header("X-Forwarded-Method", "the original method; signed"),
    _header("X-Forwarded-Uri", "the original path and query; signed"),
]
_ENVOY = [
    {
        "name": "original",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "the original request's path after the prefix (its method is this "
        "request's method, its query this request's query)",
    }
]


def _register(
    path: str,
    endpoint: Callable[..., Any],
    summary: str,
    parameters: list[dict[str, Any]],
    schema: bool = True,
) -> None:
    """GET in the schema, the other methods beside it (one operation id per route).

    Two routes, not one per method: every request walks the routes in order.
    """
    extra = {
        "parameters": parameters,
        "responses": {"200": {"headers": _answer_headers()}},
        "x-methods": METHODS,
    }
    for methods, shown in ((["GET"], schema), (METHODS[1:], False)):
        router.add_api_route(
            path,
            endpoint,
            methods=methods,
            response_model=DecisionAnswer,
            responses=ERRORS,
            summary=summary,
            include_in_schema=shown,
            openapi_extra=extra if shown else None,
        )


# Envoy first: it asks with every method, so its requests would otherwise also walk
# the other routes' method-mismatched partial matches.
_register("/envoy/{original:path}", envoy_decision, "Decide an Envoy ext_authz HTTP check", _ENVOY)
# The original request "/" arrives as the bare prefix (the edge drops the trailing slash).
_register("/envoy", envoy_decision, "Decide an Envoy ext_authz HTTP check", [], schema=False)
_register("", nginx_decision, "Decide an nginx auth_request subrequest", _NGINX)
_register("/traefik", traefik_decision, "Decide a Traefik forwardAuth request", _TRAEFIK)


def answer(decision: Decision, request: Request) -> Response:
    """The 200: identity headers for the proxy to copy upstream, and the evidence.

    The ``DecisionAnswer`` is serialised here, once, rather than validated again by
    FastAPI (this route is the gateway's cheapest, and measured: bench row
    ``decision``). The RateLimit headers are added by ``GuardedRoute``.
    """
    grant, identity = grant_of(request), admission_of(request).identity
    engagement = "" if decision.engagement == GLOBAL_DOMAIN else decision.engagement
    # Always present, empty when there is nothing to say: a proxy that copies named
    # headers then replaces a client's copy instead of letting it through.
    headers = {
        SUBJECT_HEADER: identity.subject,
        GROUPS_HEADER: ",".join(identity.groups),
        ENGAGEMENT_HEADER: engagement,
        DECISION_ID_HEADER: grant.decision_id,
        REVISION_HEADER: decision.revision,
    }
    authorizer: Authorizer = request.app.state.authorizer
    if authorizer.identity_key is not None:
        headers.update(_signed_identity(grant, headers, authorizer))
    return Response(
        answer_body(grant, identity, decision), headers=headers, media_type="application/json"
    )


def answer_body(grant: Grant, identity: Identity, decision: Decision) -> bytes:
    """The ``DecisionAnswer`` JSON, serialised directly from values the gate validated.

    The same bytes as ``DecisionAnswer(...).model_dump_json()`` (a test holds them
    equal), without building the model on the gateway's cheapest route.
    """
    return orjson.dumps(
        {
            "allowed": True,
            "decision_id": grant.decision_id,
            "mode": grant.mode,
            "subject": identity.subject,
            "groups": list(identity.groups),
            "engagement": decision.engagement,
            "object": decision.obj,
            "action": decision.action,
            "policy_revision": decision.revision,
        }
    )


def _signed_identity(
    grant: Grant, headers: dict[str, str], authorizer: Authorizer
) -> dict[str, str]:
    """The gateway's signature over the original request's method, path and identity.

    The upstream receives the original request as the client sent it, so the raw path
    and query are signed, exactly as received (never re-encoded: httpx's URL would
    percent-encode a ``"`` the proxy forwards as it is); the body is not covered.
    """
    assert authorizer.identity_key is not None
    target = grant.original
    identity = {
        name: [headers[name]]
        for name in (SUBJECT_HEADER, GROUPS_HEADER, ENGAGEMENT_HEADER)
        if headers[name]
    }
    message = Message(target.action, target.raw_path, target.query, headers=identity)
    components = ["@method", "@path", *(["@query"] if target.query else []), *identity]
    return signature_fields(message, components, authorizer.identity_key, IDENTITY_LABEL)
