"""signing.md, followed by a signer written from it and RFC 9421 alone, on the wire.

The signer below imports nothing of ``app``: it builds the signature base, the
parameters and ``Content-Digest`` as the profile page says, and sends raw bytes to a
real gateway on 127.0.0.1 (absolute-form targets, chunked bodies and repeated field
lines, which client libraries do not send). Each case is a sentence of the page: what
it accepts must be accepted, and what it refuses refused for the reason it names.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import TEST_KEY_ID, TEST_SECRET
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
PROFILE = ("@method", "@path", "x-auth-subject")
BODY = b'{"title": "Signed from the profile page alone", "severity": "low"}'
_nonces = itertools.count()


def sf_string(value: str) -> str:
    """RFC 8941 §4.1.6: a String, with backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def content_digest(body: bytes, algorithms: Sequence[str] = ("sha-256",)) -> str:
    """RFC 9530: one ``alg=:base64:`` member per algorithm."""
    functions = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
    return ", ".join(
        f"{alg}=:{base64.b64encode(functions[alg](body).digest()).decode()}:" for alg in algorithms
    )


@dataclass
class Wire:
    """A request as it goes on the wire, and the profile's signature over it."""

    method: str
    target: str  # the request target as sent: origin form, or absolute form
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    params: list[tuple[str, int | str]] = field(default_factory=list)

    def origin(self) -> tuple[str, str]:
        """(path, query) of the target, the scheme and authority of an absolute form dropped."""
        target = self.target
        if "://" in target:
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        return path, query

    def field_value(self, name: str) -> str:
        """signing.md §2.4: values trimmed, several field lines joined by ", "."""
        values = [v.strip(" \t") for k, v in self.headers if k.lower() == name]
        assert values, f"{name} is not in the request"
        return ", ".join(values)

    def __post_init__(self) -> None:
        if not any(k.lower() == "host" for k, _ in self.headers):
            self.headers.insert(0, ("Host", "gateway.internal"))

    def component(self, name: str) -> str:
        """signing.md §2.4, one component's value."""
        path, query = self.origin()
        request_target = path + (f"?{query}" if query else "")
        if name == "@method":
            return self.method
        if name == "@path":
            return path
        if name == "@query":
            return f"?{query}"
        if name == "@authority":
            return self.field_value("host").lower()
        if name == "@scheme":
            return "http"
        if name == "@request-target":
            return request_target
        if name == "@target-uri":
            return f"http://{self.field_value('host').lower()}{request_target}"
        return self.field_value(name)

    def sign(
        self, components: Sequence[str], label: str = "sig1", serialized: str | None = None
    ) -> Wire:
        """Add Signature-Input and Signature; ``serialized``: a params line as sent."""
        params = self.params or [
            ("created", int(time.time())),
            ("keyid", TEST_KEY_ID),
            ("nonce", f"interop-{time.time_ns()}-{next(_nonces)}"),
            ("alg", "hmac-sha256"),
        ]
        if serialized is None:
            inner = " ".join(sf_string(c) for c in components)
            rendered = "".join(
                f";{k}={v if isinstance(v, int) else sf_string(v)}" for k, v in params
            )
            serialized = f"({inner}){rendered}"
        lines = [f'"{name}": {self.component(name)}' for name in components]
        base = "\n".join([*lines, f'"@signature-params": {serialized}'])
        mac = hmac.new(TEST_SECRET, base.encode(), hashlib.sha256).digest()
        self.headers += [
            ("Signature-Input", f"{label}={serialized}"),
            ("Signature", f"{label}=:{base64.b64encode(mac).decode()}:"),
        ]
        return self

    def send(self, port: int) -> int:
        head = [f"{self.method} {self.target} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in self.headers]
        if self.chunked:
            head.append("Transfer-Encoding: chunked")
            chunk = f"{len(self.body):x}\r\n".encode() + self.body + b"\r\n" if self.body else b""
            payload = chunk + b"0\r\n\r\n"
        else:
            head.append(f"Content-Length: {len(self.body)}")
            payload = self.body
        head.append("Connection: close")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return int(answer.split(b" ", 2)[1])


def alice(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("X-Auth-Subject", "alice"), *extra]


def posted(digest: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return alice(("Content-Type", "application/json"), ("Content-Digest", digest), *extra)


# (case, request, covered components beyond the profile's, expected status)
ACCEPTED: list[tuple[str, Wire, tuple[str, ...], int]] = [
    ("query covered", Wire("GET", FINDINGS + "?severity=high&page=2", alice()), ("@query",), 200),
    ("bare ? needs no @query", Wire("GET", FINDINGS + "?", alice()), (), 200),
    ("bare ? covered as ?", Wire("GET", FINDINGS + "?", alice()), ("@query",), 200),
    (
        "@authority lower-cased, port kept",
        Wire("GET", FINDINGS, alice(("Host", "Gateway.Internal:8443"))),
        ("@authority",),
        200,
    ),
    (
        "absolute form: @path, @query, @authority from Host, @request-target keeps its query",
        Wire(
            "GET",
            "http://Gateway.Internal:8443" + FINDINGS + "?page=2",
            alice(("Host", "Gateway.Internal:8443")),
        ),
        ("@query", "@authority", "@request-target", "@target-uri"),
        200,
    ),
    ("@scheme on a plain connection", Wire("GET", FINDINGS, alice()), ("@scheme",), 200),
    (
        "groups on two field lines, joined",
        Wire("GET", FINDINGS, alice(("X-Auth-Groups", "analysts"), ("X-Auth-Groups", "red-team"))),
        ("x-auth-groups",),
        200,
    ),
    (
        "a covered header: trimmed, or empty",
        Wire("GET", FINDINGS, alice(("X-Pad", "  v  "), ("X-Empty", ""))),
        ("x-pad", "x-empty"),
        200,
    ),
    (
        "sha-512 instead of sha-256",
        Wire("POST", FINDINGS, posted(content_digest(BODY, ["sha-512"])), BODY),
        ("content-digest",),
        201,
    ),
    (
        "both digests, an unknown one ignored",
        Wire(
            "POST",
            FINDINGS,
            posted("md5=:AAAA:, " + content_digest(BODY, ["sha-256", "sha-512"])),
            BODY,
        ),
        ("content-digest", "content-type"),
        201,
    ),
    (
        "chunked body",
        Wire("POST", FINDINGS, posted(content_digest(BODY)), BODY, chunked=True),
        ("content-digest",),
        201,
    ),
    (
        "Idempotency-Key covered",
        Wire(
            "POST", FINDINGS, posted(content_digest(BODY), ("Idempotency-Key", "interop-1")), BODY
        ),
        ("content-digest", "idempotency-key"),
        201,
    ),
    (
        "no body, Content-Length 0: no digest",
        Wire("POST", "/admin/policy/reload", [("X-Auth-Subject", "sam")]),
        (),
        200,
    ),
    (
        "an empty chunked body with the empty body's digest",
        Wire(
            "POST",
            "/admin/policy/reload",
            [("X-Auth-Subject", "sam"), ("Content-Digest", content_digest(b""))],
            chunked=True,
        ),
        ("content-digest",),
        200,
    ),
]


@pytest.mark.parametrize(
    ("wire", "more", "status"),
    [pytest.param(w, m, s, id=case) for case, w, m, s in ACCEPTED],
)
def test_what_the_profile_accepts_is_accepted(
    stack: Stack, wire: Wire, more: tuple[str, ...], status: int
) -> None:
    signed = copy.deepcopy(wire).sign([*PROFILE, *more])  # the module's case stays unsigned
    assert signed.send(stack.gateway.port) == status


def test_parameters_in_any_order_with_tag_expires_and_a_label_of_ones_own(stack: Stack) -> None:
    now = int(time.time())
    wire = Wire("GET", FINDINGS, alice())
    wire.params = [
        ("keyid", TEST_KEY_ID),
        ("tag", "proxy-a"),
        ("nonce", f'odd "nonce" \\ {time.time_ns()}'),
        ("expires", now + 60),
        ("created", now),
        ("x-mine", 7),
    ]
    assert wire.sign(PROFILE, label="proxy").send(stack.gateway.port) == 200


def refusal(stack: Stack, captured_logs: list[dict[str, Any]], wire: Wire, reason: str) -> None:
    assert wire.send(stack.gateway.port) == 401
    assert [line["reason"] for line in captured_logs if line.get("stage") == "authn"] == [reason]


def params_line(components: Sequence[str], tail: str) -> str:
    return "(" + " ".join(sf_string(c) for c in components) + ")" + tail


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        pytest.param(
            ';created=0{now};keyid="{key}";nonce="{nonce}"', "signature_invalid", id="leading zero"
        ),
        pytest.param(
            ';created={now};keyid="{key}";nonce="{nonce}";nonce="x"',
            "signature_invalid",
            id="parameter twice",
        ),
        pytest.param(
            ';created={now};keyid="{key}";nonce="{nonce}";mine=token',
            "signature_malformed",
            id="a Token value",
        ),
        pytest.param(
            ';created={now};keyid="{key}";nonce="{nonce}";alg="hmac-sha512"',
            "algorithm_unsupported",
            id="another alg",
        ),
        pytest.param(
            ';created={now};keyid="{key}";nonce="' + "n" * 129 + '"',
            "signature_malformed",
            id="nonce of 129",
        ),
        pytest.param(';created={now};keyid="{key}"', "param_missing", id="no nonce"),
        pytest.param(
            ';created={now};keyid="{key}";nonce="{nonce}";tag=5',
            "signature_malformed",
            id="an Integer tag",
        ),
        pytest.param(
            ';created={now};keyid="{key}";nonce="{nonce}";tag=""',
            "signature_malformed",
            id="an empty tag",
        ),
    ],
)
def test_parameters_the_page_refuses(
    stack: Stack, captured_logs: list[dict[str, Any]], tail: str, reason: str
) -> None:
    values = {"now": int(time.time()), "key": TEST_KEY_ID, "nonce": f"refused-{time.time_ns()}"}
    line = params_line(PROFILE, tail.format(**values))
    refusal(
        stack, captured_logs, Wire("GET", FINDINGS, alice()).sign(PROFILE, serialized=line), reason
    )


@pytest.mark.parametrize(
    ("wire", "covered", "reason"),
    [
        pytest.param(
            Wire("GET", FINDINGS + "?page=2", alice()),
            PROFILE,
            "component_missing",
            id="query uncovered",
        ),
        pytest.param(
            Wire("GET", FINDINGS, alice(("X-Auth-Groups", "analysts"))),
            PROFILE,
            "identity_unsigned",
            id="groups uncovered",
        ),
        pytest.param(
            Wire("POST", "/admin/policy/reload", [("X-Auth-Subject", "sam")], chunked=True),
            ("@method", "@path", "x-auth-subject"),
            "component_missing",
            id="a declared (chunked) empty body without a digest",
        ),
        pytest.param(
            Wire(
                "POST",
                FINDINGS,
                posted(content_digest(BODY), ("Idempotency-Key", "interop-2")),
                BODY,
            ),
            (*PROFILE, "content-digest"),
            "component_missing",
            id="Idempotency-Key uncovered",
        ),
        pytest.param(
            Wire(
                "POST",
                FINDINGS,
                posted(content_digest(BODY) + ", sha-512=:" + "A" * 86 + "==:"),
                BODY,
            ),
            (*PROFILE, "content-digest"),
            "digest_mismatch",
            id="every supported digest must match",
        ),
        pytest.param(
            Wire("POST", FINDINGS, posted("md5=:AAAA:"), BODY),
            (*PROFILE, "content-digest"),
            "digest_mismatch",
            id="no supported digest",
        ),
    ],
)
def test_requests_the_page_refuses(
    stack: Stack,
    captured_logs: list[dict[str, Any]],
    wire: Wire,
    covered: tuple[str, ...],
    reason: str,
) -> None:
    refusal(stack, captured_logs, copy.deepcopy(wire).sign(covered), reason)


def test_a_component_name_in_upper_case_is_malformed(
    stack: Stack, captured_logs: list[dict[str, Any]]
) -> None:
    """signing.md §2.4: component names are lower case."""
    line = params_line(
        ("@method", "@path", "X-Auth-Subject"),
        f';created={int(time.time())};keyid="{TEST_KEY_ID}";nonce="upper-{time.time_ns()}"',
    )
    wire = Wire("GET", FINDINGS, alice(("Signature-Input", f"sig1={line}")))
    wire.headers.append(("Signature", "sig1=:" + base64.b64encode(bytes(32)).decode() + ":"))
    refusal(stack, captured_logs, wire, "signature_malformed")


def test_a_signature_sent_twice_is_replayed(
    stack: Stack, captured_logs: list[dict[str, Any]]
) -> None:
    wire = Wire("GET", FINDINGS, alice()).sign(PROFILE)
    assert wire.send(stack.gateway.port) == 200
    refusal(stack, captured_logs, wire, "replayed")


@pytest.mark.parametrize(
    ("key", "covered", "reason"),
    [
        pytest.param("retired-2025", (*PROFILE, "x-auth-groups"), "unknown_key", id="unknown key"),
        pytest.param(TEST_KEY_ID, PROFILE, "identity_unsigned", id="groups uncovered"),
        pytest.param(TEST_KEY_ID, (*PROFILE, "x-auth-groups"), "component_missing", id="signed"),
    ],
)
def test_a_body_without_content_digest_is_refused_in_the_pages_order(
    stack: Stack,
    captured_logs: list[dict[str, Any]],
    key: str,
    covered: tuple[str, ...],
    reason: str,
) -> None:
    """signing.md §3: the missing digest of a body is found after the MAC and identity,
    so an earlier check's reason is the one logged."""
    wire = Wire("POST", FINDINGS, alice(("X-Auth-Groups", "analysts")), BODY)
    wire.params = [("created", int(time.time())), ("keyid", key), ("nonce", f"o-{time.time_ns()}")]
    refusal(stack, captured_logs, wire.sign(covered), reason)


def test_an_unsigned_idempotency_key_is_found_before_unsigned_groups(
    stack: Stack, captured_logs: list[dict[str, Any]]
) -> None:
    headers = posted(content_digest(BODY), ("X-Auth-Groups", "analysts"))
    wire = Wire("POST", FINDINGS, headers, BODY).sign((*PROFILE, "content-digest"))
    wire.headers.append(("Idempotency-Key", "interop-3"))
    refusal(stack, captured_logs, wire, "component_missing")
