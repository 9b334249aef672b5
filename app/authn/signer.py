"""The reference signer for upstream proxies, using the verifier's own base builder.

``sign_headers`` returns the headers a proxy adds to a request; ``HttpSignatureAuth``
wraps it as an ``httpx.Auth`` so Python proxies and tests sign with one line.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Generator, Sequence

import httpx

from app.authn.base import (
    ALGORITHM,
    Message,
    ParamValue,
    build_signature_base,
    declares_body,
    hmac_sha256,
    serialize_signature_params,
)
from app.authn.digest import content_digest
from app.authn.identity import GROUPS_HEADER, IDEMPOTENCY_KEY_HEADER, SUBJECT_HEADER

DEFAULT_LABEL = "sig1"


def covered_components(message: Message, has_body: bool, cover: Sequence[str] = ()) -> list[str]:
    """The profile's required components for this message (then ``cover``), in order."""
    components = ["@method", "@path"]
    if message.query:
        components.append("@query")
    if has_body:
        components.append("content-digest")
    components.append(SUBJECT_HEADER)
    if message.header(GROUPS_HEADER) is not None:
        components.append(GROUPS_HEADER)
    if message.header(IDEMPOTENCY_KEY_HEADER) is not None:  # routes that act on it require it
        components.append(IDEMPOTENCY_KEY_HEADER)
    components.extend(name.lower() for name in cover if name.lower() not in components)
    return components


def sign_headers(
    message: Message,
    body: bytes,
    *,
    key_id: str,
    secret: bytes,
    created: int | None = None,
    nonce: str | None = None,
    expires: int | None = None,
    label: str = DEFAULT_LABEL,
    digest_algorithms: Sequence[str] = ("sha-256",),
    cover: Sequence[str] = (),
) -> dict[str, str]:
    """Headers (Content-Digest, Signature-Input, Signature) that sign ``message``.

    ``cover``: more header names to sign, e.g. a decision request's original-method
    and original-URI headers (``ComponentMissing`` if one is absent).
    """
    added: dict[str, str] = {}
    headers: dict[str, Sequence[str]] = dict(message.headers)
    # A body the framing declares (chunked) needs its digest even when it turns out
    # empty: the gateway checks for the field before it reads the body (signing.md §2).
    has_body = bool(body) or declares_body(message)
    if has_body:
        added["content-digest"] = content_digest(body, digest_algorithms)
        headers["content-digest"] = [added["content-digest"]]
    signed = Message(
        message.method, message.path, message.query, message.scheme, message.authority, headers
    )
    params: dict[str, ParamValue] = {
        "created": int(time.time()) if created is None else created,
        "keyid": key_id,
        "nonce": secrets.token_urlsafe(16) if nonce is None else nonce,
        "alg": ALGORITHM,
    }
    if expires is not None:
        params["expires"] = expires
    components = covered_components(signed, has_body, cover)
    base = build_signature_base(signed, components, params)
    mac = base64.b64encode(hmac_sha256(secret, base)).decode("ascii")
    added["signature-input"] = f"{label}={serialize_signature_params(components, params)}"
    added["signature"] = f"{label}=:{mac}:"
    return added


def message_from_httpx(request: httpx.Request) -> Message:
    """View an ``httpx.Request`` as a signature ``Message``."""
    raw_path = request.url.raw_path.decode("ascii")
    path, _, query = raw_path.partition("?")
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.multi_items():
        headers.setdefault(name.lower(), []).append(value)
    return Message(
        method=request.method,
        path=path,
        query=query,
        scheme=request.url.scheme,
        authority=request.headers.get("host", ""),
        headers=headers,
    )


class HttpSignatureAuth(httpx.Auth):
    """Sign every request with the gateway's profile (``httpx.Auth`` flow)."""

    requires_request_body = True

    def __init__(
        self,
        key_id: str,
        secret: bytes,
        subject: str | None = None,
        groups: Sequence[str] = (),
        *,
        label: str = DEFAULT_LABEL,
        expires_in: int | None = None,
        digest_algorithms: Sequence[str] = ("sha-256",),
        cover: Sequence[str] = (),
    ) -> None:
        self.key_id = key_id
        self._secret = secret
        self.subject = subject
        self.groups = tuple(groups)
        self.label = label
        self.expires_in = expires_in
        self.digest_algorithms = tuple(digest_algorithms)
        self.cover = tuple(cover)

    def __repr__(self) -> str:
        return f"HttpSignatureAuth(key_id={self.key_id!r}, subject={self.subject!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.subject is not None:
            request.headers[SUBJECT_HEADER] = self.subject
        if self.groups:
            request.headers[GROUPS_HEADER] = ",".join(self.groups)
        created = int(time.time())
        expires = None if self.expires_in is None else created + self.expires_in
        added = sign_headers(
            message_from_httpx(request),
            request.content,
            key_id=self.key_id,
            secret=self._secret,
            created=created,
            expires=expires,
            label=self.label,
            digest_algorithms=self.digest_algorithms,
            cover=self.cover,
        )
        request.headers.update(added)
        yield request
