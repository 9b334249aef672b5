"""The worked test vectors in app/api/docs/signing.md, regenerated and compared verbatim.

Run ``python -m tests.unit.test_signature_vectors`` to print the sections the
document must contain; the test fails if the document drifts from the code.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

from app.authn.base import Message, build_signature_base, hmac_sha256
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import sign_headers
from app.authn.verifier import Reason, SignatureVerifier, parse_signature_headers
from tests.conftest import REPO

SIGNING_MD = REPO / "app/api/docs/signing.md"
# Documented test key: appears in signing.md on purpose; never use it anywhere else.
VECTOR_KEY_ID = "proxy-test-2026"
VECTOR_SECRET = b"signing-md-test-vector-secret-0123456789"
CREATED = 1_790_000_000


@dataclass(frozen=True)
class Vector:
    title: str
    message: Message
    body: bytes
    nonce: str
    expires: int | None = None


VECTORS = [
    Vector(
        "Vector 1: GET with a query and groups, no body",
        Message(
            method="GET",
            path="/v1/engagements/acme-2026/findings",
            query="severity=high&page=2",
            scheme="https",
            authority="gateway.internal",
            headers={"x-auth-subject": ["alice"], "x-auth-groups": ["analysts,red-team"]},
        ),
        b"",
        nonce="b3k2Zr9vQzW1xN4mT8pL",
    ),
    Vector(
        "Vector 2: POST with a JSON body and expires",
        Message(
            method="POST",
            path="/v1/engagements/acme-2026/findings",
            scheme="https",
            authority="gateway.internal",
            headers={"x-auth-subject": ["alice"], "content-type": ["application/json"]},
        ),
        b'{"title":"SQL injection in login form","severity":"high"}',
        nonce="Zq8d2LkP0sVt7yHcR1wE",
        expires=CREATED + 60,
    ),
]

RFC_KEY_B64 = (
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
RFC_MESSAGE = Message(
    method="POST",
    path="/foo",
    query="param=Value&Pet=dog",
    authority="example.com",
    headers={"date": ["Tue, 20 Apr 2021 02:07:55 GMT"], "content-type": ["application/json"]},
)
RFC_COMPONENTS = ["date", "@authority", "content-type"]
RFC_PARAMS = {"created": 1618884473, "keyid": "test-shared-secret"}


def _request_text(vector: Vector) -> str:
    target = vector.message.path + (f"?{vector.message.query}" if vector.message.query else "")
    lines = [f"{vector.message.method} {target} HTTP/1.1", f"Host: {vector.message.authority}"]
    for name, values in vector.message.headers.items():
        lines += [f"{name.title()}: {value}" for value in values]
    if vector.body:
        lines += [f"Content-Length: {len(vector.body)}", "", vector.body.decode()]
    return "\n".join(lines)


def signed(vector: Vector) -> tuple[dict[str, str], str]:
    """The headers the signer adds, and the signature base they were computed over."""
    added = sign_headers(
        vector.message,
        vector.body,
        key_id=VECTOR_KEY_ID,
        secret=VECTOR_SECRET,
        created=CREATED,
        nonce=vector.nonce,
        expires=vector.expires,
    )
    message = replace(
        vector.message, headers={**vector.message.headers, **{k: [v] for k, v in added.items()}}
    )
    # The base is rebuilt from the Signature-Input the signer wrote, not from a copy of its logic.
    candidate = parse_signature_headers(added["signature-input"], added["signature"])[0]
    base = build_signature_base(message, candidate.components, candidate.params)
    assert hmac_sha256(VECTOR_SECRET, base) == candidate.signature
    return added, base


def render(vector: Vector) -> str:
    """The markdown section for one vector, exactly as signing.md carries it."""
    added, base = signed(vector)
    mac = hmac_sha256(VECTOR_SECRET, base)
    parts = [
        f"### {vector.title}",
        "",
        "Request before signing:",
        "",
        "```http",
        _request_text(vector),
        "```",
        "",
    ]
    if vector.body:
        parts += ["Content-Digest (SHA-256 of the body bytes above):", "", "```text"]
        parts += [f"Content-Digest: {added['content-digest']}", "```", ""]
    parts += [
        f"Signature base ({len(base.encode())} bytes, lines joined by LF, no trailing LF):",
        "",
        "```text",
        base,
        "```",
        "",
        f"HMAC-SHA256 (hex): `{mac.hex()}`",
        "",
        "Headers the proxy adds:",
        "",
        "```text",
        *(f"{name.title()}: {value}" for name, value in added.items()),
        "```",
    ]
    return "\n".join(parts)


def render_rfc() -> str:
    base = build_signature_base(RFC_MESSAGE, RFC_COMPONENTS, RFC_PARAMS)
    mac = base64.b64encode(hmac_sha256(base64.b64decode(RFC_KEY_B64), base)).decode()
    return "\n".join(
        [
            "```text",
            base,
            "```",
            "",
            f"Key (base64): `{RFC_KEY_B64}`",
            "",
            f"Signature: `sig-b25=:{mac}:`",
        ]
    )


def test_vectors_verify_with_the_gateway_verifier() -> None:
    verifier = SignatureVerifier(KeyRing([SigningKey(VECTOR_KEY_ID, VECTOR_SECRET)]), 300)
    for vector in VECTORS:
        added, _ = signed(vector)
        headers = {**vector.message.headers, **{k: [v] for k, v in added.items()}}
        identity = verifier.verify(replace(vector.message, headers=headers), vector.body, CREATED)
        assert identity.subject == "alice"


def test_rfc_vector_matches_the_rfc() -> None:
    assert "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=" in render_rfc()


def test_signing_md_carries_every_vector_verbatim() -> None:
    doc = SIGNING_MD.read_text(encoding="utf-8")
    for section in [*(render(v) for v in VECTORS), render_rfc()]:
        assert section in doc, f"signing.md drifted; regenerate with:\n{section}"
    assert VECTOR_SECRET.decode() in doc


if __name__ == "__main__":
    print(f"secret: {VECTOR_SECRET.decode()}\n")
    for vector in VECTORS:
        print(render(vector), end="\n\n")
    print(render_rfc())


def test_every_rejection_reason_is_in_the_checks_table() -> None:
    """Implementers read the reason a 401 was logged under from signing.md §3."""
    rows = [line for line in SIGNING_MD.read_text().splitlines() if line.startswith("| ")]
    documented = {line.rsplit("|", 2)[-2].strip().strip("`") for line in rows}
    assert {reason.value for reason in Reason} <= documented
