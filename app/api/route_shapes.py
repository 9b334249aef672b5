"""The objects and actions this gateway's routes are decided as (``app.authz.routes``).

Read from the same routers the app serves (``GUARDED_ROUTERS``) and the same
settings (pass-through routes, authorizer templates), so ``gateway policy lint
--config`` checks rules against exactly what the gateway would ask the policy.
"""

from __future__ import annotations

from app.api.pipeline import Guard, path_target
from app.api.routes import GUARDED_ROUTERS
from app.api.routes.passthrough import check_passthrough_services
from app.api.routing import GuardedRoute
from app.authz.routes import RouteShape, names_engagement
from app.authz.targets import RouteTemplates
from app.core.config import Settings


def route_shapes(settings: Settings) -> list[RouteShape]:
    """Typed routes decided by path and method, pass-through routes, authorizer templates.

    ``ConfigError`` for route settings the gateway would refuse at start-up (an
    authorizer template that does not compile, a pass-through route's unknown
    service), with the same message: lint never checks against routes that cannot be.
    """
    RouteTemplates(settings.authorizer.routes)  # compiles each, as the authorizer does
    check_passthrough_services(settings.orchestration.passthrough, settings.services)
    shapes: list[RouteShape] = []
    for router in GUARDED_ROUTERS:
        for route in router.routes:
            if not isinstance(route, GuardedRoute):
                continue
            # The decision routes' own guard decides the original URI (the authorizer
            # templates below), not their own path.
            guard = route.guard
            if type(guard) is Guard and guard.target is path_target:
                methods = frozenset(route.methods or ())
                shapes.append(
                    RouteShape(route.path, methods, "typed", names_engagement(route.path))
                )
    for passthrough in settings.orchestration.passthrough:
        template = passthrough.policy_object or passthrough.path
        actions = {passthrough.action} if passthrough.action else set(passthrough.methods)
        scoped = names_engagement(passthrough.path)  # the path names the engagement
        shapes.append(RouteShape(template, frozenset(actions), "passthrough", scoped))
    for template in settings.authorizer.routes:
        shapes.append(RouteShape(template, None, "authorizer", names_engagement(template)))
    return shapes
