"""Request header names that mean something to the gateway: what a caller never sends on.

Pass-through routes forward an allow-list of the caller's headers (``DEFAULT_FORWARDED``
plus a route's own ``forward_headers``), never a copy of everything. Whatever a
route adds, a name is refused (at start-up) and never forwarded (per request) when,
lower-cased with ``_`` read as ``-`` (many servers and CGI-style frameworks fold
``X_Auth_Subject`` into ``X-Auth-Subject``), it is one of ``NEVER_FORWARDED`` or
starts with one of ``NEVER_FORWARDED_PREFIXES``:

- identity and signature: the proxy's identity headers, ``Signature``,
  ``Signature-Input``, ``Content-Digest`` (the gateway sends its own, signed);
- the gateway's own: ``X-Gateway-*``, ``X-Request-ID``, ``traceparent`` and
  ``tracestate`` (``app.core.tracing`` writes both), ``Host``,
  ``Content-Length``, ``Forwarded`` and ``X-Forwarded-*`` (a caller's claims about
  the hops before it are not facts the gateway checked);
- method overrides and URL rewrites, which make a service act on another method
  or path than the one the policy decided;
- hop-by-hop headers (RFC 9110 section 7.6.1 and the de-facto proxy ones).
"""

from __future__ import annotations

import re

# RFC 9110 section 7.6.1 plus the de-facto proxy ones; names listed in Connection are
# dropped per request too.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
URL_REWRITES = frozenset(
    {
        "x-original-url",
        "x-original-uri",
        "x-original-path",
        "x-rewrite-url",
        "x-rewrite-uri",
        "x-envoy-original-path",
    }
)
NEVER_FORWARDED = (
    HOP_BY_HOP
    | METHOD_OVERRIDES
    | URL_REWRITES
    | {
        "x-auth-subject",
        "x-auth-groups",
        "signature",
        "signature-input",
        "content-digest",
        "x-request-id",
        "traceparent",
        "tracestate",
        "host",
        "content-length",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
    }
)
NEVER_FORWARDED_PREFIXES = ("x-auth-", "x-gateway-", "x-forwarded-")

# An ingress in front of an application (deploy/: nginx auth_request, Traefik, Envoy)
# cannot drop a header by prefix, only by name. These are the well-known names of the
# families above that it handles by name, so a client's copy never reaches the
# application. It states these itself, from its own connection (the peer, the scheme):
INGRESS_STATED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-real-ip"})
# ... and removes these (with METHOD_OVERRIDES and URL_REWRITES). Any other
# X-Auth-*/X-Gateway-*/X-Forwarded-* name still reaches the application: it must read
# only the identity headers the gateway answers with. Remote-User is outside the
# families, but the SSO name an application may read in place of X-Auth-Subject.
INGRESS_REMOVED = frozenset(
    {
        "forwarded",
        "x-client-ip",
        "content-digest",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-forwarded-prefix",
        "x-forwarded-path",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-forwarded-protocol",
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "x-forwarded-client-cert",
        "x-forwarded-tls-client-cert",
        "x-forwarded-tls-client-cert-info",
        "x-auth-user",
        "x-auth-email",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-preferred-username",
        "x-auth-request-groups",
        "x-auth-request-access-token",
        "remote-user",
    }
)

# What a pass-through route forwards of the caller's request without being told:
# content negotiation, the body's own description, and conditional/range requests.
DEFAULT_FORWARDED = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-type",
        "content-encoding",
        "content-language",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "range",
    }
)
FIELD_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # RFC 9110 token


def folded(name: str) -> str:
    """A field name as a lenient server would read it: lower case, ``_`` as ``-``."""
    return name.lower().replace("_", "-")


def never_forwarded(name: str) -> bool:
    """True for a name that must never pass from a caller to a service, in any spelling."""
    canonical = folded(name)
    return canonical in NEVER_FORWARDED or canonical.startswith(NEVER_FORWARDED_PREFIXES)
