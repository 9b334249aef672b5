"""Settings: one pydantic-settings model, nested per concern, validated at start.

Sources, highest priority first: keyword arguments, environment variables
(``GATEWAY_`` prefix, ``__`` between nesting levels, e.g.
``GATEWAY_SERVICES__FINDINGS__URL``), then the YAML file named by
``GATEWAY_CONFIG_FILE``. Secrets are never values here: a signing key names the
environment variable or file that holds its secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)
from redis.asyncio.connection import parse_url as parse_redis_url

from app.core.engagement_settings import EngagementStateSettings
from app.core.errors import ConfigError
from app.core.headers import FIELD_NAME, never_forwarded
from app.core.observability_settings import DecisionLogSettings, TracingSettings
from app.core.ops_settings import OpsSettings

ENV_PREFIX = "GATEWAY_"
CONFIG_FILE_ENV = "GATEWAY_CONFIG_FILE"
# With --workers: a file holding the settings the supervisor validated, which every
# worker (a restarted one too) builds its app from, instead of reading the file again.
SETTINGS_SNAPSHOT_ENV = "GATEWAY_SETTINGS_SNAPSHOT"
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
REDIS_URL_ENV = "REDIS_URL"
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySpec(_Section):
    """One HMAC key: its id, and its secret in an env var or a file. Under signing.keys a
    proxy's key the gateway verifies with; as services.<name>.signing_key and
    authorizer.identity_signing_key the gateway's own, which it signs with."""

    id: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    secret_env: str | None = None
    secret_file: Path | None = None
    # With a time zone (a "Z" or an offset): a naive time has no one meaning, and
    # could not be compared with the clock (every request with the key was a 500).
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_secret_source(self) -> Self:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret_env or secret_file")
        if self.not_before and self.not_after and self.not_before >= self.not_after:
            raise ValueError("not_before must be earlier than not_after")
        return self


# RFC 8941 Dictionary key: what a Signature-Input label may be.
SIGNATURE_LABEL_PATTERN = r"^[a-z*][a-z0-9_.*-]{0,63}$"


class SigningSettings(_Section):
    """Inbound RFC 9421 verification: keys, time window, label and replay store size."""

    keys: list[KeySpec] = Field(default_factory=list)
    # YAML with a ``keys:`` list of KeySpec; reloaded on change and on SIGHUP.
    keys_file: Path | None = None
    watch_keys_file: bool = True
    max_skew_seconds: Annotated[int, Field(ge=1, le=3600)] = 300
    # When set, only this Signature-Input label is considered (see signing.md).
    label: Annotated[str, Field(pattern=SIGNATURE_LABEL_PATTERN)] | None = None
    # In-memory nonce store bound; when full, requests get 503 rather than reopen replay.
    nonce_capacity: Annotated[int, Field(ge=1, le=10_000_000)] = 1_000_000

    @field_validator("keys")
    @classmethod
    def _unique_ids(cls, keys: list[KeySpec]) -> list[KeySpec]:
        ids = [k.id for k in keys]
        if len(ids) != len(set(ids)):
            raise ValueError("key ids must be unique")
        return keys


class PolicySettings(_Section):
    dir: Path = Path("policies")
    model_file: str = "model.conf"
    policy_file: str = "policy.csv"
    # Seconds between polls of the policy files for hot reload; 0 turns watching off.
    watch_interval: Annotated[float, Field(ge=0, le=3600)] = 1.0
    # A candidate policy directory decided beside the live one, never enforced (policies.md).
    shadow_dir: Path | None = None
    engagement_state: EngagementStateSettings = Field(default_factory=EngagementStateSettings)

    @property
    def model_path(self) -> Path:
        return self.dir / self.model_file

    @property
    def policy_path(self) -> Path:
        return self.dir / self.policy_file


class RetrySettings(_Section):
    """Retries of idempotent calls (tenacity): attempts, deadline, full-jitter backoff."""

    attempts: Annotated[int, Field(ge=1, le=10)] = 3
    deadline_seconds: PositiveSeconds = 5.0
    backoff_initial_seconds: Annotated[float, Field(gt=0, le=60)] = 0.05
    backoff_max_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0
    max_retry_after_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    statuses: tuple[Annotated[int, Field(ge=500, le=599)], ...] = (502, 503, 504)

    @model_validator(mode="after")
    def _backoff_in_order(self) -> Self:
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_initial_seconds must not exceed backoff_max_seconds")
        return self


class BreakerSettings(_Section):
    """One circuit breaker per service (pybreaker) with bounded half-open trials."""

    fail_max: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=5,
        description="consecutive failed requests that open it (retries of a request count once)",
    )
    reset_timeout_seconds: PositiveSeconds = 30.0
    success_threshold: Annotated[int, Field(ge=1, le=100)] = 1
    half_open_max_calls: Annotated[int, Field(ge=1, le=100)] = 1


class ServiceSettings(_Section):
    url: AnyHttpUrl
    connect_timeout: PositiveSeconds = 1.0
    read_timeout: PositiveSeconds = 5.0
    write_timeout: PositiveSeconds = 5.0
    pool_timeout: PositiveSeconds = 1.0
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 100
    # Idle connections kept; never more than max_connections (a larger value keeps that many).
    max_keepalive: Annotated[int, Field(ge=0, le=10_000)] = 32
    keepalive_expiry_seconds: PositiveSeconds = 15.0
    # The most bytes of an answer the gateway reads whole (typed routes, composites);
    # beyond it a 502. Pass-through routes stream and have their own max_response_bytes.
    max_answer_bytes: Annotated[int, Field(ge=1, le=1 << 30)] = 16 * 1024 * 1024
    # The HTTP/1.1 client: the gateway's own (llhttp-parsed) or aiohttp's (decision 0005).
    transport: Literal["native", "aiohttp"] = "native"
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    # The gateway signs the caller's identity to this service with this key (RFC 9421).
    signing_key: KeySpec | None = None


PASSTHROUGH_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# The success statuses a pass-through route documents unless it names its own.
DEFAULT_SUCCESS: dict[str, tuple[int, ...]] = {
    "GET": (200, 206, 304),
    "HEAD": (200, 206, 304),
    "POST": (200, 201, 202),
    "PUT": (200, 201, 204),
    "PATCH": (200, 204),
    "DELETE": (200, 202, 204),
}
PATH_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
ENGAGEMENT_ROOT = "/v1/engagements/{engagement_id}"


class PassthroughRoute(_Section):
    """A public path forwarded, streamed both ways, to one service after authn and authz."""

    path: Annotated[str, Field(pattern=r"^/v1/[A-Za-z0-9_{}/.-]+$")]
    service: str
    upstream_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_{}/.-]*$")]
    methods: tuple[Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], ...] = ("GET",)
    # Policy object and action; defaults are the normalised path and the method, as typed routes.
    policy_object: str | None = None
    action: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_:-]{0,31}$")] | None = None
    max_request_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024
    max_response_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    # Caller headers forwarded besides the default allow-list (app/api/docs/passthrough.md);
    # identity, signature, gateway, forwarding, override and rewrite headers are refused.
    forward_headers: tuple[str, ...] = ()
    # Success statuses the service answers, listed in the OpenAPI schema; default by method.
    statuses: tuple[Annotated[int, Field(ge=200, le=399)], ...] | None = None

    def success_statuses(self, method: str) -> tuple[int, ...]:
        return self.statuses or DEFAULT_SUCCESS[method]

    @field_validator("forward_headers")
    @classmethod
    def _forwardable(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not FIELD_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header field name")
            if never_forwarded(name):
                raise ValueError(f"{name!r} is never forwarded from a caller (see passthrough.md)")
        return tuple(name.lower() for name in names)

    @model_validator(mode="after")
    def _engagement_where_the_policy_reads_it(self) -> Self:
        """The engagement is ``/v1/engagements/{engagement_id}/...``, where explain reads it."""
        check_routable(self.path)
        check_engagement_placement(self.path)
        return self

    @model_validator(mode="after")
    def _placeholders_known(self) -> Self:
        known = set(PATH_PLACEHOLDER.findall(self.path))
        for template in (self.upstream_path, self.policy_object or ""):
            unknown = set(PATH_PLACEHOLDER.findall(template)) - known
            if unknown:
                raise ValueError(f"placeholders {sorted(unknown)} are not in path {self.path}")
        return self


class OrchestrationSettings(_Section):
    """Composite operations and declarative pass-through routes."""

    overview_deadline_seconds: PositiveSeconds = 2.0
    downstream_deadline_seconds: PositiveSeconds = Field(
        default=30.0,
        description="the most time one request on a typed route (findings, overview, close, "
        "admin reopen) spends on the services, every call, retry and backoff included; then "
        "504. No attempt or retry starts after it, one in flight is cut. A close's undo is not "
        "bounded by it. A pass-through request without a body is bounded by it up to the "
        "answer's head (its streamed body is not); one with a body is not bounded by it. "
        "At least connect_timeout + read_timeout of every service",
    )
    idempotency_ttl_seconds: Annotated[int, Field(ge=1, le=7 * 86400)] = Field(
        default=86400,
        description="how long a close's or a keyed finding create's result is replayed for "
        "its Idempotency-Key",
    )
    idempotency_capacity: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100_000,
        description="without Redis: the most Idempotency-Keys a process keeps (each with "
        "its result, for the TTL); a new key beyond it is a 503 and nothing runs",
    )
    idempotency_lease_seconds: PositiveSeconds = Field(
        default=60.0,
        description="with Redis: how long a key's claim and an engagement's close/reopen lock "
        "outlive a gateway that died mid-run (a live run renews both every third of this)",
    )
    passthrough: list[PassthroughRoute] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lease_within_ttl(self) -> Self:
        if self.idempotency_lease_seconds > self.idempotency_ttl_seconds:
            raise ValueError("idempotency_lease_seconds must not exceed idempotency_ttl_seconds")
        return self


class EdgeSettings(_Section):
    """The first stage: the body cap, and what a slow or greedy client may hold (per process)."""

    max_body_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024
    # Seconds a client has to send a request's whole head, from connecting (or from the
    # first byte of a later request on a kept-alive connection); then 408 and closed.
    header_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Open connections or requests in progress per process; above it a request gets 503.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0,
        description="longest pause in a request body the gateway waits out while it reads "
        "it (then 408 and closed); after an answer sent before the body was read, how "
        "long the rest may take to arrive before the connection is closed",
    )
    send_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="longest a client may leave an answer unread once the gateway's send "
        "buffer is full (nginx's send_timeout); then the connection is dropped, and with it "
        "a pass-through stream's service connection",
    )
    body_min_rate_bytes: Annotated[int, Field(ge=0, le=1 << 30)] = Field(
        default=1024,
        description="slowest average rate, bytes a second, at which a body may arrive: "
        "each byte received adds 1/rate s to the body's allowance of body_timeout_seconds "
        "(mod_reqtimeout's MinRate); 0 bounds only the pauses",
    )


# A request header name (RFC 9110 token, lower case as the verifier compares them).
_HEADER_NAME = r"^[a-z0-9][a-z0-9-]{0,63}$"
_ROUTE_TEMPLATE = r"^/[A-Za-z0-9_{}:/.~-]*$"


_PLACEHOLDER_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


def check_engagement_placement(template: str) -> None:
    """Refuse a route template that puts the engagement where the policy tools do not.

    Suites, ``policy explain``, ``/admin/policy/explain`` and the who-can / what-can
    queries take a request's engagement from its path alone
    (``app.authz.fields.engagement_of``): the segment after ``/v1/engagements/``,
    else ``*``. A template whose ``{engagement_id}`` sits elsewhere, or one under
    ``/v1/engagements/`` with a literal or differently named segment there, would be
    decided in another engagement than those tools test and explain, so a passing
    suite case could be decided the other way live.
    """
    names = _PLACEHOLDER_NAME.findall(template)  # {engagement_id:str} names it too
    under = template.startswith("/v1/engagements/")
    rooted = template == ENGAGEMENT_ROOT or template.startswith(ENGAGEMENT_ROOT + "/")
    if ("engagement_id" in names or under) and not rooted:
        raise ValueError(
            f"path {template}: the engagement placeholder is {ENGAGEMENT_ROOT}... "
            "(the segment after /v1/engagements/), where the policy tools read it, "
            "as on every other route"
        )


def check_routable(template: str) -> None:
    """Refuse a route template no request path can match once the edge normalised it.

    The edge removes a trailing slash, collapses ``//`` and removes ``.`` and ``..``
    segments (``app.edge.paths``) before anything is routed or decided, so a template
    with one of them was accepted at start-up and then matched nothing: every request
    meant for it a 404 (a decision endpoint's: a 403, denied by default).
    """
    segments = template.split("/")[1:]
    if template != "/" and any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(
            f"path {template}: no request can match it: the edge removes a trailing "
            "slash, empty segments (//) and . or .. segments from every path first"
        )


class AuthorizerSettings(_Section):
    """The decision endpoints (/v1/decisions): the gateway as another proxy's authorizer."""

    routes: list[Annotated[str, Field(pattern=_ROUTE_TEMPLATE)]] = Field(
        default_factory=list,
        description="templates of the requests that may be decided, tried in order "
        "(starlette syntax): {engagement_id} is the engagement, only as the segment after "
        "/v1/engagements/ (where the policy tools read it); {rest:path} matches the rest; "
        "a URI matching none is denied",
    )
    method_header: Annotated[str, Field(pattern=_HEADER_NAME)] = Field(
        default="x-original-method",
        description="header carrying the original method (nginx auth_request); must be signed",
    )
    uri_header: Annotated[str, Field(pattern=_HEADER_NAME)] = Field(
        default="x-original-uri",
        description="header carrying the original URI (nginx auth_request); must be signed",
    )
    identity_signing_key: KeySpec | None = Field(
        default=None,
        description="with a key, an allowed answer also carries the identity signed by the "
        "gateway (Signature-Input/Signature, label gateway) for the upstream to verify",
    )

    @field_validator("routes")
    @classmethod
    def _engagement_where_the_policy_reads_it(cls, routes: list[str]) -> list[str]:
        for template in routes:
            check_routable(template)
            check_engagement_placement(template)
        return routes


RedisMode = Literal["standalone", "sentinel", "cluster"]
HOST_PORT = re.compile(r"^[A-Za-z0-9._-]{1,253}:[0-9]{1,5}$")


def _has_password(url: str) -> bool:
    parts = urlsplit(url)
    return parts.password is not None or "password=" in parts.query


class RedisSettings(_Section):
    """Shared state for scale-out: one Redis server, a primary behind Sentinel, or a Cluster.

    Unset (no ``url``, not ``sentinel`` mode) keeps all state in this process.
    """

    mode: RedisMode = Field(
        default="standalone",
        description="standalone: one server (or a managed endpoint) at url; sentinel: the "
        "primary named service_name, found through sentinels; cluster: Redis Cluster, url "
        "names any node",
    )
    url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL (else $REDIS_URL); unset keeps all "
        "state in this process. Not used in sentinel mode. TLS options go in the query, as "
        "redis-py reads them: rediss://host:6380/0?ssl_ca_certs=/etc/redis/ca.pem (a "
        "certificate that does not verify shows as ConnectionError in /readyz)",
    )
    nodes: tuple[str, ...] = Field(
        default=(),
        description="cluster: more nodes to discover the cluster from, besides url; "
        "sentinel: the sentinels (host:port, at least one)",
    )
    service_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = Field(
        default="mymaster", description="sentinel: the name the sentinels monitor the primary by"
    )
    db: Annotated[int, Field(ge=0, le=15)] = Field(
        default=0, description="sentinel: the primary's database number"
    )
    password_env: str | None = Field(
        default=None,
        description="environment variable holding the Redis servers' password (in place "
        "of one in url, e.g. from a Kubernetes Secret); unset or empty stops start-up",
    )
    sentinel_password_env: str | None = Field(
        default=None,
        description="sentinel: environment variable holding the sentinels' password; unset "
        "or empty stops start-up",
    )
    socket_timeout: PositiveSeconds = 0.5
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64

    @model_validator(mode="before")
    @classmethod
    def _url_from_env(cls, data: Any) -> Any:
        # $REDIS_URL is the conventional fallback, except where a URL has no meaning.
        if isinstance(data, dict) and "url" not in data and data.get("mode") != "sentinel":
            return {**data, "url": os.environ.get(REDIS_URL_ENV) or None}
        return data

    @field_validator("nodes")
    @classmethod
    def _host_ports(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        for node in nodes:
            if not HOST_PORT.fullmatch(node) or not 0 < int(node.rpartition(":")[2]) < 65536:
                raise ValueError("every node must be host:port")
        return nodes

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is None:
            return url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            parse_redis_url(url)  # what redis-py will make of it (a port, a database)
        except ValueError as exc:
            raise ValueError(f"not a valid Redis URL: {_redis_url_problem(url, exc)}") from None
        return url

    @model_validator(mode="after")
    def _fits_mode(self) -> Self:
        if self.mode == "sentinel":
            if self.url is not None:
                raise ValueError("sentinel mode finds the primary through nodes; unset url")
            if not self.nodes:
                raise ValueError("sentinel mode needs nodes: the sentinels' host:port")
        elif self.mode == "cluster":
            if self.url is None or not self.url.startswith(("redis://", "rediss://")):
                raise ValueError("cluster mode needs url: redis:// or rediss:// of any node")
            if urlsplit(self.url).path not in ("", "/", "/0"):
                raise ValueError("a Redis Cluster has only database 0")
        elif self.nodes:
            raise ValueError("nodes is for sentinel or cluster mode")
        if self.password_env is not None and self.url is not None and _has_password(self.url):
            raise ValueError("give the password in url or through password_env, not both")
        return self

    @property
    def enabled(self) -> bool:
        """Whether state is shared through Redis (else it stays in this process)."""
        return self.url is not None or self.mode == "sentinel"


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="the lowest level written; decision lines (gateway.decision) are "
        "written whatever it says, where log.decisions sends them",
    )
    format: Literal["auto", "json", "console"] = "auto"
    decisions: DecisionLogSettings = Field(default_factory=DecisionLogSettings)


class Settings(BaseSettings):
    """Everything the gateway needs to start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    signing: SigningSettings = Field(default_factory=SigningSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    services: dict[str, ServiceSettings] = Field(default_factory=dict)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    authorizer: AuthorizerSettings = Field(default_factory=AuthorizerSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
        for name in services:
            if not SERVICE_NAME.fullmatch(name):
                raise ValueError(f"service name {name!r} must match {SERVICE_NAME.pattern}")
        return services

    @model_validator(mode="after")
    def _routes_fit_the_edge(self) -> Self:
        """A route limit above the edge's ceiling would never apply: say so at start-up."""
        ceiling = self.edge.max_body_bytes
        for index, route in enumerate(self.orchestration.passthrough):
            if route.max_request_bytes > ceiling:
                raise ValueError(
                    f"orchestration.passthrough[{index}].max_request_bytes "
                    f"({route.max_request_bytes}) exceeds edge.max_body_bytes ({ceiling}), "
                    "which refuses larger bodies first: raise edge.max_body_bytes"
                )
        return self

    @model_validator(mode="after")
    def _deadline_fits_an_attempt(self) -> Self:
        """A deadline below one attempt would cut a slow answer before the service's
        own read timeout has a say (and make that timeout a dead setting)."""
        deadline = self.orchestration.downstream_deadline_seconds
        for name, service in self.services.items():
            attempt = service.connect_timeout + service.read_timeout
            if deadline < attempt:
                raise ValueError(
                    f"orchestration.downstream_deadline_seconds ({deadline:g}) is below one "
                    f"attempt of services.{name} (connect_timeout {service.connect_timeout:g} "
                    f"+ read_timeout {service.read_timeout:g} = {attempt:g}): raise the "
                    "deadline or lower the service's timeouts"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def _redis_url_problem(url: str, exc: ValueError) -> str:
    """What is wrong with ``url``, in words that never quote its credentials.

    The parser's own message quotes what it read as the port: with a "/", "?" or "#"
    not percent-encoded in the password (a base64 secret), that is the password's first
    part, as the parser ends the authority there. So the URL is judged again without
    its user name and password; if it is valid so, they are the problem.
    """
    scheme, sep, rest = url.partition("://")
    password = urlsplit(url).password
    if "@" in rest:
        try:
            parse_redis_url(f"{scheme}{sep}{rest.rpartition('@')[2]}")
        except ValueError as bare:
            exc = bare
        else:
            return "percent-encode any '/', '?' or '#' in the user name or password (%2F, %3F, %23)"
    detail = str(exc)
    return detail.replace(password, "***") if password else detail


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning any problem into one readable ``ConfigError``."""
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file and not Path(config_file).is_file():
        where = f"--config or {CONFIG_FILE_ENV}"
        what = "not a file" if Path(config_file).exists() else "no such file"
        raise ConfigError(f"configuration file {config_file} ({where}): {what}")
    try:
        if config_file:
            _check_yaml_mapping(Path(config_file))
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:  # an environment variable's value is not valid JSON
        raise ConfigError(_describe_settings_error(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_file}: not valid YAML: {describe_yaml_error(exc)}") from None
    except (OSError, ValueError, TypeError) as exc:  # unreadable, or not a mapping
        raise ConfigError(f"{config_file}: {exc}") from None


def load_snapshot(path: str) -> Settings:
    """The settings a ``--workers`` supervisor validated (``SETTINGS_SNAPSHOT_ENV``).

    Every setting is in it, and pydantic-settings ranks these (its init values) above
    the environment, which is the one the supervisor validated anyway; the supervisor
    gives its workers no configuration file. So a file edited since (a ConfigMap
    update) cannot stop a worker the supervisor starts again, nor give one pod's
    workers two configurations.
    """
    try:
        return Settings.model_validate_json(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"settings snapshot {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"settings snapshot {path}: {describe_validation_error(exc)}") from None


def _describe_settings_error(exc: SettingsError) -> str:
    """pydantic-settings' parse failure, naming the variables it came from."""
    found = re.search(r'field "([^"]+)"', str(exc))
    section = found.group(1) if found else None
    if section is None:
        return f"environment: {exc}"
    return (
        f"{section}: the value of {ENV_PREFIX}{section.upper()} or of a "
        f"{ENV_PREFIX}{section.upper()}__* variable is not valid JSON for it"
    )


def _check_yaml_mapping(path: Path) -> None:
    """The file is YAML (else ``yaml.YAMLError``) whose top level is sections, or empty."""
    with path.open("rb") as stream:
        document = yaml.safe_load(stream)
    if document is not None and not isinstance(document, dict):
        kind = type(document).__name__
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a {kind}")


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one: the problem and where (line, column)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``where: what``; input values are never echoed."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
