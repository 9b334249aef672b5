"""Per-request fast paths give exactly what the slower general code gave."""

from __future__ import annotations

import gc
import gzip
import random
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

import httpx
import pytest
import structlog
from fastapi import Path as PathParam
from fastapi.dependencies.utils import get_dependant, request_params_to_args
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import MutableHeaders

from app.api.decision_schemas import DecisionAnswer, Mode
from app.api.decisions import Grant
from app.api.routes.decisions import answer_body
from app.api.routing import path_values
from app.authz.policy import Decision
from app.authz.targets import OriginalTarget
from app.core.errors import InvalidPath
from app.core.ids import uuid4_hex
from app.core.logging import LevelNameTime
from app.domain.identity import Identity
from app.downstream.client import _lowered, _with_fields, in_memory_request
from app.downstream.transport import buffered_response
from app.edge import paths
from app.edge.correlation import with_request_id
from app.edge.paths import normalize_path
from app.ops import metrics
from app.ops.processes import GEN0_THRESHOLD, freeze_startup_heap
from tests.integration.ops.conftest import metric_value

RAW = [(b"Content-Type", b"application/json"), (b"X-Extra", b"1"), (b"X-Extra", b"2")]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (RAW, b'{"a": 1}'),
        (RAW, b""),
        ([*RAW, (b"Transfer-Encoding", b"chunked")], b"chunked body"),
        ([*RAW, (b"Content-Length", b"3")], b"abc"),
        ([*RAW, (b"Content-Encoding", b"gzip")], gzip.compress(b"zipped")),
    ],
)
def test_buffered_response_equals_httpx_content_response(
    headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    expected = httpx.Response(200, headers=headers, content=body)
    got = buffered_response(200, headers, body)
    assert got.status_code == expected.status_code
    assert got.headers.raw == expected.headers.raw
    assert got.content == expected.content
    assert got.text == expected.text


@pytest.mark.anyio
async def test_buffered_response_reads_and_closes_like_any_response() -> None:
    response = buffered_response(200, RAW, b"payload")
    assert await response.aread() == b"payload"
    assert [chunk async for chunk in response.aiter_bytes()] == [b"payload"]
    await response.aclose()
    assert response.is_closed


@pytest.mark.parametrize(
    "caller",
    [
        None,
        {"content-type": "application/json"},
        [("X-Trace", "a"), ("traceparent", "forged"), ("X-Request-ID", "forged"), ("x-a", "1")],
        [("x-auth-subject", "mallory"), ("Accept", "text/plain"), ("accept", "x")],
    ],
)
def test_propagated_headers_replace_caller_copies(caller: object) -> None:
    propagated = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "x-request-id": "c1"}
    propagated["x-auth-subject"] = "alice"
    reference = httpx.Headers(caller)  # type: ignore[arg-type]
    reference.update(propagated)
    merged = httpx.Headers(_with_fields(_lowered(caller), propagated))  # type: ignore[arg-type]
    assert sorted(merged.multi_items()) == sorted(reference.multi_items())


@pytest.mark.parametrize(
    ("method", "body", "fields"),
    [
        ("GET", b"", []),
        ("get", b"", [("accept", "application/json")]),
        ("POST", b"", [("idempotency-key", "k1")]),
        ("PUT", b'{"a":1}', [("content-type", "application/json")]),
        ("DELETE", b"x", [("x-a", "1"), ("x-a", "2")]),
        ("POST", b"abc", [("content-length", "3"), ("host", "elsewhere:81")]),
    ],
)
def test_in_memory_request_equals_httpx_content_request(
    method: str, body: bytes, fields: list[tuple[str, str]]
) -> None:
    url = httpx.URL("http://127.0.0.1:8081/engagements/acme-2026?x=1")
    ours = in_memory_request(method, url, fields, body, {"timeout": {"read": 1.0}})
    reference = httpx.Request(method, url, headers=fields, content=body or None)
    assert (ours.method, ours.url, ours.content) == (reference.method, reference.url, body)
    assert sorted(ours.headers.multi_items()) == sorted(reference.headers.multi_items())
    assert ours.extensions == {"timeout": {"read": 1.0}}


def test_cached_metric_children_keep_counting() -> None:
    labels = {"route": "/fast-path-test", "method": "GET", "status": "200"}
    before = metric_value(metrics.render().decode(), "gateway_http_requests_total", **labels)
    for _ in range(3):
        metrics.observe_request("/fast-path-test", "GET", 200, 0.001)
    after = metric_value(metrics.render().decode(), "gateway_http_requests_total", **labels)
    assert after == before + 3
    decision = {"result": "allow", "reason": "fast_path_test"}
    before = metric_value(metrics.render().decode(), "gateway_authz_decisions_total", **decision)
    metrics.count_decision("allow", "fast_path_test")
    metrics.count_decision("allow", "fast_path_test")
    after = metric_value(metrics.render().decode(), "gateway_authz_decisions_total", **decision)
    assert after == before + 2


def _outcome(path: str) -> str:
    try:
        return normalize_path(path)
    except InvalidPath as exc:
        return f"error: {exc.detail}"


def test_canonical_path_shortcut_changes_no_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(9)
    pieces = ["/", "/", "a", "B", ".", "..", "%2e", "%41", "%2F", "%", "~", ";", "-", "v1"]
    samples = ["/", "//", "/.", "/a/", "/a/..", "/v1/engagements/acme-2026/findings"]
    samples += ["/" + "".join(rng.choices(pieces, k=rng.randint(0, 8))) for _ in range(3000)]
    fast = [_outcome(p) for p in samples]
    monkeypatch.setattr(paths, "_is_canonical", lambda text: False)
    assert fast == [_outcome(p) for p in samples]


class _Named:
    name = "gateway.edge"


@pytest.mark.parametrize("method", ["info", "warning", "warn", "error", "exception", "debug"])
def test_level_name_time_equals_structlog_processors(method: str) -> None:
    reference: dict[str, object] = {"event": "x", "a": 1}
    for processor in (structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name):
        reference = processor(_Named(), method, reference)  # type: ignore[arg-type]
    got = LevelNameTime()(_Named(), method, {"event": "x", "a": 1})
    assert list(got) == [*reference, "timestamp"]
    assert {k: got[k] for k in reference} == reference


@pytest.mark.parametrize(
    "now_ns", [0, 1_764_160_000_000_000_000, 1_764_160_000_123_456_789, 1_764_160_059_000_999_999]
)
def test_timestamp_equals_structlog_iso_utc(now_ns: int) -> None:
    stamper = LevelNameTime()
    expected = datetime.fromtimestamp(now_ns // 1000 / 1e6, UTC)
    expected = expected.replace(microsecond=(now_ns // 1000) % 1_000_000)
    assert stamper.timestamp(now_ns) == expected.isoformat().replace("+00:00", "Z")
    assert stamper.timestamp(now_ns) == stamper.timestamp(now_ns)  # the cached second


def test_startup_heap_is_frozen_out_of_gc_scans() -> None:
    thresholds = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GEN0_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()  # the rest of the test session keeps ordinary collection
        gc.set_threshold(*thresholds)


@given(st.binary(min_size=16, max_size=16))
def test_uuid4_hex_equals_the_uuid_module(raw: bytes) -> None:
    assert uuid4_hex(raw) == uuid.UUID(bytes=raw, version=4).hex


def test_fresh_uuid4_hex_values_are_version_4_and_distinct() -> None:
    values = {uuid4_hex() for _ in range(1000)}
    assert len(values) == 1000
    assert all(uuid.UUID(hex=v).version == 4 and len(v) == 32 for v in values)


_FIELD_NAMES = st.sampled_from(
    [b"content-type", b"x-request-id", b"X-Request-ID", b"x-a", b"set-cookie"]
)


@given(st.lists(st.tuples(_FIELD_NAMES, st.binary(max_size=8)), max_size=6))
def test_with_request_id_equals_starlette_mutable_headers(
    fields: list[tuple[bytes, bytes]],
) -> None:
    message = {"type": "http.response.start", "status": 200, "headers": list(fields)}
    # Starlette compares raw names as sent; ASGI names are lower-case, so lower them first.
    lowered = [(name.lower(), value) for name, value in fields]
    reference = {"type": "http.response.start", "headers": list(lowered)}
    MutableHeaders(scope=reference)["x-request-id"] = "c0ffee00"
    got = with_request_id(message["headers"], b"c0ffee00")
    assert sorted((n.lower(), v) for n, v in got) == sorted(reference["headers"])
    assert [v for n, v in got if n == b"x-request-id"] == [b"c0ffee00"]


_TEXT = st.text(max_size=12)


@given(
    subject=_TEXT,
    groups=st.lists(_TEXT, max_size=3),
    engagement=_TEXT,
    obj=_TEXT,
    action=_TEXT,
    revision=_TEXT,
    decision_id=_TEXT,
    mode=st.sampled_from(["nginx", "traefik", "envoy"]),
)
def test_the_decision_answer_is_the_models_own_json(
    subject: str,
    groups: list[str],
    engagement: str,
    obj: str,
    action: str,
    revision: str,
    decision_id: str,
    mode: Mode,
) -> None:
    identity = Identity(subject=subject, groups=tuple(groups), key_id="k")
    decision = Decision(True, subject, engagement, obj, action, (), revision)
    grant = Grant(mode, decision_id, OriginalTarget(engagement, obj, action, obj, ""))
    model = DecisionAnswer(
        decision_id=decision_id,
        mode=mode,
        subject=subject,
        groups=groups,
        engagement=engagement,
        object=obj,
        action=action,
        policy_revision=revision,
    )
    assert answer_body(grant, identity, decision) == model.model_dump_json().encode()


async def _path_endpoint(
    name: str,
    number: int,
    ident: UUID,
    kind: Literal["a", "b"],
    slug: Annotated[str, PathParam(pattern=r"^[a-z0-9-]{3,8}$")],
    aliased: Annotated[str, PathParam(alias="other-name")],
) -> None:
    return None


# Path parameters of several kinds, as FastAPI declares them for a route.
_PATH_FIELDS = get_dependant(
    path="/{name}/{number}/{ident}/{kind}/{slug}/{other-name}", call=_path_endpoint
).path_params
_PATH_VALUE = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"^-?[0-9]{1,5}$", fullmatch=True),
    st.uuids().map(str),
    st.sampled_from(["a", "b", "c", "abc", "ab-12", "A-B-C"]),
)
_PATH_KEYS = st.sampled_from(["name", "number", "ident", "kind", "slug", "other-name", "x"])


@given(st.dictionaries(_PATH_KEYS, _PATH_VALUE))
def test_path_values_equal_fastapis_request_params_to_args(received: dict[str, str]) -> None:
    """The direct routes' path validation: FastAPI's values whenever it has no errors,
    and ``None`` (FastAPI then answers) whenever it has."""
    fast = path_values(_PATH_FIELDS)
    assert fast is not None
    expected, errors = request_params_to_args(_PATH_FIELDS, received)
    got = fast(received)
    if errors:
        assert got is None
    else:
        assert got == expected


def test_app_state_reads_as_starlette_state_without_its_getattr_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starlette.datastructures import State

    from app.api.lane import AppState

    state = AppState({"given": 1})
    state.gate = "gate"
    state.gate = "gate 2"
    assert (state.given, state.gate) == (1, "gate 2")
    assert state._state == {"given": 1, "gate": "gate 2"}  # what State keeps, unchanged

    def no_fallback(self: State, key: str) -> object:
        raise AssertionError(f"State.__getattr__ ran for {key}")

    monkeypatch.setattr(State, "__getattr__", no_fallback)
    assert state.gate == "gate 2"  # an ordinary attribute read
    monkeypatch.undo()
    del state.gate
    assert state._state == {"given": 1}
    with pytest.raises(AttributeError, match="has no attribute 'gate'"):
        _ = state.gate


def test_lazy_logger_writes_what_structlog_s_proxy_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from structlog._config import BoundLoggerLazyProxy

    from app.core.logging import LazyLogger, get_logger

    lines: list[object] = []
    structlog.configure(
        processors=[
            lambda _l, method, event: lines.append((method, dict(event))) or event,
            lambda _l, _m, event: repr(event),
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(10),
        cache_logger_on_first_use=False,
    )
    try:
        ours, theirs = get_logger("x"), structlog.get_logger("x")
        assert isinstance(ours, LazyLogger)
        for level in ("debug", "info", "warning", "error"):
            for logger in (ours, theirs):
                getattr(logger, level)("event", key=level)
        assert len(lines) == 8
        assert lines[0::2] == lines[1::2]

        def no_fallback(self: BoundLoggerLazyProxy, name: str) -> object:
            raise AssertionError(f"the proxy's __getattr__ ran for {name}")

        monkeypatch.setattr(BoundLoggerLazyProxy, "__getattr__", no_fallback)
        ours.info("still", key="written")
        assert lines[-1] == ("info", {"key": "written", "event": "still"})
    finally:
        structlog.reset_defaults()
