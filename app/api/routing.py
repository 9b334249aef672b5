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

A guarded endpoint left with nothing for FastAPI to solve (its only parameter is
the request, and it returns a ``Response``: the decision endpoints and the
pass-through routes) is called directly after its guard: FastAPI's request
handler would only read no body, solve no dependency and return that same
response, at about a fifth of a decision request's CPU (measured in process).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute

from app.api.pipeline import Gate, Guard
from app.core.errors import ConfigError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Endpoint = Callable[..., Awaitable[Any]]
RequestDependency = Callable[[Request], Awaitable[Any]]
_REQUEST_PARAM = "gateway_request"


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
        if self.guard is not None:
            resolved = _resolving_endpoint(endpoint, declared)
            self.direct = _direct_call(resolved, typing.get_type_hints(endpoint).get("return"))
            endpoint = resolved
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Handler:
        if self.guard is None:
            return super().get_route_handler()
        return _guarded(self.guard, self.direct or super().get_route_handler())


def _direct_call(endpoint: Endpoint, returned: object) -> Handler | None:
    """``endpoint`` (resolved) as a handler when FastAPI has nothing to solve, else ``None``.

    That is: its one parameter is the request, and the declared endpoint returns a
    ``Response`` (which FastAPI would return as it is). Anything else (path, query,
    header or body parameters, a model to serialise) goes through FastAPI's handler.
    """
    params = list(inspect.signature(endpoint).parameters.values())
    if len(params) != 1 or params[0].annotation is not Request:
        return None
    if not (inspect.isclass(returned) and issubclass(returned, Response)):
        return None
    name = params[0].name

    async def direct(request: Request) -> Response:
        response: Response = await endpoint(**{name: request})
        return response

    return direct


def _guarded(guard: Guard, handler: Handler) -> Handler:
    async def guarded_handler(request: Request) -> Response:
        gate: Gate = request.app.state.gate
        admission = await guard.run(gate, request)
        response = await handler(request)
        if admission.rate_headers:
            response.headers.update(admission.rate_headers)
        return response

    return guarded_handler
