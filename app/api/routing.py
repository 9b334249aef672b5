"""``GuardedRoute``: the route class that runs a route's declared guard first.

Every router uses it. At construction it reads the route's dependencies; if one
of them is a ``Guard`` (``Authorized``, or a pass-through route's own), the
route's handler runs the ``Gate`` (authn, rate limit, authz) before FastAPI
reads the body or solves anything (``app.api.pipeline``,
docs/decisions/0006-guards-before-the-body.md). A route without a guard is an
ordinary ``APIRoute`` (the probes).

On a guarded route it also resolves, itself, the dependencies that need nothing
but the request (the guards, and services built from ``app.state``): it calls
each with the request, once per request as FastAPI's cache would, and passes
the value to the endpoint. FastAPI solves everything else (path parameters,
headers, the body) as usual. Each dependency FastAPI solves costs about as much
as a bare endpoint's whole dispatch in this FastAPI version (see
``bench/micro_pipeline.py``), and these are called on every request. The
declarations are unchanged: the same ``Annotated[..., Depends(...)]`` aliases,
which FastAPI resolves the ordinary way wherever this class is not used.

A guarded route with a JSON body refuses, after its guard, a body whose
``Content-Type`` is not JSON (``application/json`` or ``application/*+json``, as
FastAPI reads it) with ``415 unsupported_media_type``: FastAPI would validate the
raw bytes against the model and answer a 422 that names a type error, which
tells the caller nothing about what it sent wrong.

A guarded endpoint that takes nothing but the request and path parameters and
returns a ``Response`` (the typed GET routes, the decision endpoints, the
pass-through routes) is called directly after its guard: its path parameters
are validated by each parameter's own FastAPI field (``path_values``: what
FastAPI's ``request_params_to_args`` does for a plain path parameter, without its
per-call alias and model look-ups, about 10 µs a request), and FastAPI's request
handler, which would read no body, solve nothing else and return that same
response, is skipped. A path parameter that fails goes to that handler, which
answers its usual 422.
"""

from __future__ import annotations

import email.message
import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from fastapi import Request, Response
from fastapi._compat import ModelField
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant, request_params_to_args
from fastapi.params import Form, Path
from fastapi.routing import APIRoute

from app.api.pipeline import Gate, Guard
from app.core.errors import ConfigError, UnsupportedMediaType

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Endpoint = Callable[..., Awaitable[Any]]
RequestDependency = Callable[[Request], Awaitable[Any]]
_REQUEST_PARAM = "gateway_request"
# What FastAPI's exit-stack middleware and request wrapper put in the scope (0.165).
_EXIT_STACKS = ("fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack")


def _calls(dependant: Dependant) -> Iterator[object]:
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def route_guard(dependant: Dependant) -> Guard | None:
    """The one ``Guard`` a route declares (directly or through its dependencies), if any."""
    guards = {id(call): call for call in _calls(dependant) if isinstance(call, Guard)}
    if len(guards) > 1:
        raise ConfigError(f"{dependant.path}: a route declares one guard, not {len(guards)}")
    return next(iter(guards.values()), None)


def _request_only(dep: Dependant) -> bool:
    """A dependency of the request alone, with nothing for FastAPI to parse or clean up."""
    call = dep.call
    target = call.__call__ if isinstance(call, Guard) else call
    return (
        dep.name is not None
        and dep.use_cache
        and dep.request_param_name is not None
        and not dep.dependencies
        and not (dep.path_params or dep.query_params or dep.header_params)
        and not (dep.cookie_params or dep.body_params)
        and dep.response_param_name is None
        and dep.background_tasks_param_name is None
        and inspect.iscoroutinefunction(target)
    )


def _resolving_endpoint(endpoint: Endpoint, dependant: Dependant) -> Endpoint:
    """``endpoint`` with its request-only dependencies resolved here, not by FastAPI."""
    direct: dict[str, RequestDependency] = {
        dep.name: dep.call  # type: ignore[misc]  # _request_only checked both
        for dep in dependant.dependencies
        if _request_only(dep)
    }
    if not direct:
        return endpoint
    if not inspect.iscoroutinefunction(endpoint):
        raise ConfigError(f"{dependant.path}: a guarded endpoint must be async")
    hints = typing.get_type_hints(endpoint, include_extras=True)
    kept = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(endpoint).parameters.values()
        if p.name not in direct
    ]
    request_name = dependant.request_param_name or _REQUEST_PARAM
    pass_request = dependant.request_param_name is not None
    if not pass_request:
        keyword = inspect.Parameter.KEYWORD_ONLY
        kept.append(inspect.Parameter(_REQUEST_PARAM, keyword, annotation=Request))

    async def resolved(**values: Any) -> Any:
        request: Request = values[request_name] if pass_request else values.pop(request_name)
        by_call: dict[int, Any] = {}
        for name, dependency in direct.items():
            key = id(dependency)
            if key not in by_call:
                by_call[key] = await dependency(request)
            values[name] = by_call[key]
        return await endpoint(**values)

    # Not functools.wraps: FastAPI follows __wrapped__ and would see the old parameters.
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(resolved, attr, getattr(endpoint, attr))
    resolved.__signature__ = inspect.Signature(kept)  # type: ignore[attr-defined]
    return resolved


class GuardedRoute(APIRoute):
    """An ``APIRoute`` whose declared ``Guard`` runs before FastAPI reads the request."""

    def __init__(self, path: str, endpoint: Endpoint, **kwargs: Any) -> None:
        declared = get_dependant(path=path, call=endpoint)
        self.guard = route_guard(declared)
        self.direct: Handler | None = None
        # The guard and the direct call, for the lane (app.api.lane) to call without
        # FastAPI's request wrapper; None where FastAPI must solve the request.
        self.lane_handler: Handler | None = None
        self._returns: object = None
        if self.guard is not None:
            self._returns = typing.get_type_hints(endpoint).get("return")
            endpoint = _resolving_endpoint(endpoint, declared)
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.guard is None:
            return handler
        self.direct = _direct_call(self.dependant, self._returns, handler)
        if self.direct is not None:
            self.lane_handler = _guarded(self.guard, self.direct)
        body = self.body_field
        if body is not None and not isinstance(body.field_info, Form):
            handler = _json_only(handler)
        return _guarded(self.guard, self.direct or handler)


def _direct_call(dependant: Dependant, returned: object, handler: Handler) -> Handler | None:
    """The endpoint as a handler when FastAPI has only path parameters to solve, else ``None``.

    That is: besides the request, path parameters only (no query, header, cookie or
    body parameter, no dependency left), and the declared endpoint returns a
    ``Response``, which FastAPI would return as it is. ``handler`` (FastAPI's) answers
    a path parameter that fails validation, with its own 422.
    """
    call, request_name = dependant.call, dependant.request_param_name
    if call is None or request_name is None or dependant.dependencies:
        return None
    if dependant.query_params or dependant.header_params or dependant.cookie_params:
        return None
    if dependant.body_params or dependant.response_param_name is not None:
        return None
    if dependant.background_tasks_param_name is not None:
        return None
    if not (inspect.isclass(returned) and issubclass(returned, Response)):
        return None
    endpoint: Endpoint = call
    path_fields = dependant.path_params
    fast = path_values(path_fields)

    async def direct(request: Request) -> Response:
        values = fast(request.path_params) if fast is not None else None
        if values is None:  # FastAPI decides: the values, or errors for its 422
            values, errors = request_params_to_args(path_fields, request.path_params)
            if errors:
                return await _with_exit_stacks(handler, request)
        values[request_name] = request
        response: Response = await endpoint(**values)
        return response

    return direct


PathValues = Callable[[Mapping[str, Any]], dict[str, Any] | None]


def path_values(fields: Sequence[ModelField]) -> PathValues | None:
    """Validate plain path parameters with their own fields; ``None`` if one is not plain.

    A plain path parameter (a ``Path`` field, FastAPI allows only scalar ones, with
    no validation alias other than its alias) is read by FastAPI under its alias
    and validated by the field, at the location ``("path", alias)``: the same here,
    with the look-ups done once. The function returns ``None`` for a missing or
    failing value, and the caller then asks ``request_params_to_args`` (whose errors
    are FastAPI's 422); a property test holds both equal on every value.
    """
    plan: list[tuple[str, str, ModelField, tuple[str, str]]] = []
    for field in fields:
        info = field.field_info
        alias = info.validation_alias
        if not isinstance(info, Path) or alias not in (None, field.alias):
            return None  # an AliasPath or AliasChoices: FastAPI's own look-up
        plan.append((field.name, field.alias, field, ("path", field.alias)))

    def values_of(received: Mapping[str, Any]) -> dict[str, Any] | None:
        values: dict[str, Any] = {}
        for name, alias, field, loc in plan:
            raw = received.get(alias)
            if raw is None:
                return None
            value, errors = field.validate(raw, values, loc=loc)
            if errors:
                return None
            values[name] = value
        return values

    return values_of


async def _with_exit_stacks(handler: Handler, request: Request) -> Response:
    """FastAPI's handler, given the exit stacks FastAPI's layers would have opened.

    The lane (``app.api.lane``) calls a direct route without FastAPI's exit-stack
    middleware and request wrapper; the handler only runs here for a path
    parameter that fails, and answers its 422.
    """
    scope = request.scope
    missing = [key for key in _EXIT_STACKS if key not in scope]
    async with AsyncExitStack() as stacks:
        for key in missing:
            scope[key] = await stacks.enter_async_context(AsyncExitStack())
        return await handler(request)


def is_json_media_type(content_type: str) -> bool:
    """Whether FastAPI parses a body of this ``Content-Type`` as JSON (its own test)."""
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _json_only(handler: Handler) -> Handler:
    """``handler`` behind a 415 for a non-empty body that is not declared JSON.

    Runs after the guard (so an unsigned or denied caller learns nothing of the
    route's media type); the body is already read (authn checked its digest), so
    this reads nothing more. An empty body goes on to FastAPI's 422 (a required body).
    """

    async def json_only(request: Request) -> Response:
        if await request.body():
            content_type = request.headers.get("content-type")
            if not content_type or not is_json_media_type(content_type):
                raise UnsupportedMediaType(
                    "This route takes a JSON body (Content-Type: application/json)."
                )
        return await handler(request)

    return json_only


def _guarded(guard: Guard, handler: Handler) -> Handler:
    async def guarded_handler(request: Request) -> Response:
        gate: Gate = request.app.state.gate
        admission = await guard.run(gate, request)
        response = await handler(request)
        if admission.rate_headers:
            response.headers.update(admission.rate_headers)
        return response

    return guarded_handler
