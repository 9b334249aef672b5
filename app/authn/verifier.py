"""Inbound RFC 9421 verification: the gateway's front door.

``SignatureVerifier.verify`` takes a ``Message`` and its body and returns the
caller's ``Identity`` or raises ``AuthenticationFailed`` with a machine reason
(``Reason``) for the decision log. Checks run from cheap to costly: parse,
parameters, key, time window, required coverage, MAC, body digest, identity.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import http_sf

from app.authn.base import (
    ALGORITHM,
    ComponentMissing,
    Message,
    ParamValue,
    build_signature_base,
    hmac_sha256,
)
from app.authn.digest import DigestError, verify_content_digest
from app.authn.identity import (
    GROUPS_HEADER,
    SUBJECT_HEADER,
    SUBJECT_PATTERN,
    Identity,
    parse_groups,
)
from app.authn.keys import KeyRing
from app.core.errors import AuthenticationFailed


class Reason(StrEnum):
    """Why a request was not authenticated; logged, never shown to the client."""

    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_MALFORMED = "signature_malformed"
    SIGNATURE_INVALID = "signature_invalid"
    UNKNOWN_KEY = "unknown_key"
    KEY_EXPIRED = "key_expired"
    ALGORITHM_UNSUPPORTED = "algorithm_unsupported"
    COMPONENT_MISSING = "component_missing"
    DIGEST_MISMATCH = "digest_mismatch"
    STALE = "stale"
    FUTURE = "future"
    EXPIRED = "expired"
    IDENTITY_UNSIGNED = "identity_unsigned"
    IDENTITY_MALFORMED = "identity_malformed"


@dataclass(frozen=True, slots=True)
class SignatureInput:
    label: str
    components: tuple[str, ...]
    params: Mapping[str, ParamValue]
    signature: bytes


def _fail(reason: Reason) -> AuthenticationFailed:
    return AuthenticationFailed(reason.value)


def _parse_dictionary(value: str) -> Mapping[str, object]:
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
        raise _fail(Reason.SIGNATURE_MALFORMED) from None
    if not isinstance(parsed, dict):
        raise _fail(Reason.SIGNATURE_MALFORMED)
    return parsed


def _components(inner: object) -> tuple[str, ...]:
    if not isinstance(inner, list):
        raise _fail(Reason.SIGNATURE_MALFORMED)
    names = []
    for item in inner:
        name, item_params = item
        if not isinstance(name, str) or item_params or name != name.lower():
            raise _fail(Reason.SIGNATURE_MALFORMED)
        names.append(name)
    if len(set(names)) != len(names):
        raise _fail(Reason.SIGNATURE_MALFORMED)
    return tuple(names)


def _params(raw: object) -> dict[str, ParamValue]:
    if not isinstance(raw, dict):
        raise _fail(Reason.SIGNATURE_MALFORMED)
    params: dict[str, ParamValue] = {}
    for key, value in raw.items():
        if key in ("created", "expires") and not (type(value) is int and value >= 0):
            raise _fail(Reason.SIGNATURE_MALFORMED)
        if key in ("keyid", "nonce", "alg", "tag") and not (type(value) is str and value):
            raise _fail(Reason.SIGNATURE_MALFORMED)
        if not isinstance(value, int | str) or isinstance(value, bool):
            raise _fail(Reason.SIGNATURE_MALFORMED)
        params[key] = value
    if "keyid" not in params or "created" not in params:
        raise _fail(Reason.SIGNATURE_MALFORMED)
    return params


def parse_signature_headers(signature_input: str, signature: str) -> list[SignatureInput]:
    """Every labelled signature in the two fields, in Signature-Input order."""
    inputs = _parse_dictionary(signature_input)
    signatures = _parse_dictionary(signature)
    parsed = []
    for label, member in inputs.items():
        if not isinstance(member, tuple) or label not in signatures:
            raise _fail(Reason.SIGNATURE_MALFORMED)
        sig_member = signatures[label]
        sig_value = sig_member[0] if isinstance(sig_member, tuple) else None
        if not isinstance(sig_value, bytes):
            raise _fail(Reason.SIGNATURE_MALFORMED)
        parsed.append(SignatureInput(label, _components(member[0]), _params(member[1]), sig_value))
    if not parsed:
        raise _fail(Reason.SIGNATURE_MISSING)
    return parsed


class SignatureVerifier:
    """Verifies the gateway's inbound signing profile against a key ring."""

    def __init__(self, keyring: KeyRing, max_skew_seconds: int = 300) -> None:
        self.keyring = keyring
        self.max_skew = max_skew_seconds

    def verify(self, message: Message, body: bytes, now: float | None = None) -> Identity:
        """Return the signed identity or raise ``AuthenticationFailed``."""
        sig_input_value = message.header("signature-input")
        sig_value = message.header("signature")
        if sig_input_value is None or sig_value is None:
            raise _fail(Reason.SIGNATURE_MISSING)
        candidate = parse_signature_headers(sig_input_value, sig_value)[0]
        moment = datetime.now(UTC).timestamp() if now is None else now
        self._check_params(candidate.params, moment)
        self._check_coverage(message, body, candidate.components)
        secret = self._secret_for(str(candidate.params["keyid"]), moment)
        try:
            base = build_signature_base(message, candidate.components, candidate.params)
        except ComponentMissing:
            raise _fail(Reason.COMPONENT_MISSING) from None
        if not hmac.compare_digest(hmac_sha256(secret, base), candidate.signature):
            raise _fail(Reason.SIGNATURE_INVALID)
        self._check_digest(message, body, candidate.components)
        return self._identity(message, candidate)

    def _check_params(self, params: Mapping[str, ParamValue], now: float) -> None:
        if params.get("alg", ALGORITHM) != ALGORITHM:
            raise _fail(Reason.ALGORITHM_UNSUPPORTED)
        created = int(params["created"])
        if created > now + self.max_skew:
            raise _fail(Reason.FUTURE)
        if created < now - self.max_skew:
            raise _fail(Reason.STALE)
        expires = params.get("expires")
        if expires is not None and int(expires) <= now:
            raise _fail(Reason.EXPIRED)

    def _secret_for(self, key_id: str, now: float) -> bytes:
        key = self.keyring.get(key_id)
        if key is None:
            raise _fail(Reason.UNKNOWN_KEY)
        if not key.valid_at(datetime.fromtimestamp(now, UTC)):
            raise _fail(Reason.KEY_EXPIRED)
        return key.secret

    def _check_coverage(self, message: Message, body: bytes, covered: tuple[str, ...]) -> None:
        required = {"@method", "@path", SUBJECT_HEADER}
        if message.query:
            required.add("@query")
        if body or message.header("content-digest") is not None:
            required.add("content-digest")
        if not required.issubset(covered):
            raise _fail(Reason.COMPONENT_MISSING)
        for name in (SUBJECT_HEADER, GROUPS_HEADER):
            if message.header(name) is not None and name not in covered:
                raise _fail(Reason.IDENTITY_UNSIGNED)

    def _check_digest(self, message: Message, body: bytes, covered: tuple[str, ...]) -> None:
        if "content-digest" not in covered:
            return
        field = message.header("content-digest")
        if field is None:
            raise _fail(Reason.COMPONENT_MISSING)
        try:
            verify_content_digest(field, body)
        except DigestError:
            raise _fail(Reason.DIGEST_MISMATCH) from None

    def _identity(self, message: Message, candidate: SignatureInput) -> Identity:
        subject = message.header(SUBJECT_HEADER) or ""
        groups = parse_groups(message.header(GROUPS_HEADER))
        if not SUBJECT_PATTERN.match(subject) or groups is None:
            raise _fail(Reason.IDENTITY_MALFORMED)
        return Identity(subject=subject, groups=groups, key_id=str(candidate.params["keyid"]))
