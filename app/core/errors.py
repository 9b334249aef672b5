"""The gateway's one exception tree.

Every expected failure is a ``GatewayError`` carrying its HTTP status, a stable
machine ``code`` and a public ``title``. One handler (``app.api.problems``)
renders it as ``application/problem+json`` with the request's ``corr_id``;
services never raise ``HTTPException``.

    GatewayError                       500 internal
    ├── ConfigError                    (start-up only: never reaches a client)
    ├── BadRequest                     400 bad_request
    │   └── InvalidPath                400 invalid_path
    ├── AuthenticationFailed           401 unauthenticated (reason logged, not shown)
    ├── AccessDenied                   403 forbidden
    ├── NotFound                       404 not_found
    ├── RequestTimeout                 408 request_timeout (the body stalled; closed)
    ├── Conflict                       409 conflict
    ├── Gone                           410 gone
    ├── PreconditionFailed             412 precondition_failed
    ├── PayloadTooLarge                413 payload_too_large
    ├── UnsupportedMediaType           415 unsupported_media_type
    ├── RangeNotSatisfiable            416 range_not_satisfiable
    ├── UnprocessableContent           422 unprocessable_content
    ├── IdempotencyKeyReused           422 idempotency_key_reused
    ├── PolicyRejected                 422 policy_rejected (reload gate; last good kept)
    ├── TooManyRequests                429 rate_limited
    ├── ServiceUnavailable             503 unavailable
    └── DownstreamError                502 bad_gateway
        ├── DownstreamTimeout          504 gateway_timeout
        └── CircuitOpen                503 circuit_open

    ResponseAborted (not a GatewayError: no answer can be rendered any more) ends an
    answer that had begun and cannot be finished; the edge logs it and the
    connection is closed without completing the message.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status_code: int = 500
    code: str = "internal"
    title: str = "Internal error"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers: dict[str, str] = dict(headers or {})


class ConfigError(GatewayError):
    """Configuration that cannot be used; raised at start-up only."""

    code = "config_error"
    title = "Configuration error"


class BadRequest(GatewayError):
    status_code = 400
    code = "bad_request"
    title = "Bad request"


class InvalidPath(BadRequest):
    code = "invalid_path"
    title = "Invalid request path"


class AuthenticationFailed(GatewayError):
    """The request's signature or identity was not accepted.

    ``reason`` is a machine reason code for the decision log; clients only see
    the generic title so a rejection never helps an attacker.
    """

    status_code = 401
    code = "unauthenticated"
    title = "Authentication required"

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__("The request is not signed by a trusted proxy.", headers=headers)
        self.reason = reason


class AccessDenied(GatewayError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class RequestTimeout(GatewayError):
    """The client stopped sending the body, or sent it below the minimum rate."""

    status_code = 408
    code = "request_timeout"
    title = "Request timeout"


class Conflict(GatewayError):
    status_code = 409
    code = "conflict"
    title = "Conflict"


class Gone(GatewayError):
    status_code = 410
    code = "gone"
    title = "Gone"


class PreconditionFailed(GatewayError):
    status_code = 412
    code = "precondition_failed"
    title = "Precondition failed"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RangeNotSatisfiable(GatewayError):
    status_code = 416
    code = "range_not_satisfiable"
    title = "Range not satisfiable"


class UnprocessableContent(GatewayError):
    """A service could not act on a (pass-through) body it parsed."""

    status_code = 422
    code = "unprocessable_content"
    title = "Unprocessable content"


class IdempotencyKeyReused(GatewayError):
    """An ``Idempotency-Key`` sent again with a different request."""

    status_code = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused"


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class PolicyRejected(GatewayError):
    """A policy reload failed its gate; the last good policy stays in force."""

    status_code = 422
    code = "policy_rejected"
    title = "Policy rejected"


class ServiceUnavailable(GatewayError):
    status_code = 503
    code = "unavailable"
    title = "Service unavailable"


class DownstreamError(GatewayError):
    """A downstream service failed; ``service`` names it in the problem body."""

    status_code = 502
    code = "bad_gateway"
    title = "Downstream service failed"

    def __init__(
        self, service: str, detail: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail or f"The {service} service failed.", headers=headers)
        self.service = service


class DownstreamTimeout(DownstreamError):
    status_code = 504
    code = "gateway_timeout"
    title = "Downstream service timed out"


class CircuitOpen(DownstreamError):
    status_code = 503
    code = "circuit_open"
    title = "Downstream service unavailable"


class TooManyRequests(GatewayError):
    """A rate limit was spent; ``headers`` carry ``Retry-After`` and ``RateLimit``."""

    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


class ResponseAborted(Exception):
    """An answer that had begun cannot be finished (a streamed service body broke off).

    Deliberately not a ``GatewayError``: the status line is sent, so no problem can be
    rendered; Starlette's exception middleware lets it through, and the edge logs one
    ``response_aborted`` line (no traceback) and returns without completing the
    answer, so the server closes the connection and the client sees a truncated
    message, never a clean end. ``reason``: what broke, for the log.
    """

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason
