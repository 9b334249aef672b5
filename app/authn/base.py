"""The RFC 9421 signature base: built here, and only here, for verifier and signer.

``build_signature_base`` is the one function both sides call, so a request the
reference signer produces verifies by construction, and the RFC's own test
vectors check both at once. Covered components are derived components
(``@method``, ``@authority``, ``@scheme``, ``@target-uri``, ``@request-target``,
``@path``, ``@query``) or lower-case header field names, without component
parameters. ``@signature-params`` is re-serialised canonically with ``http_sf``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import http_sf

from app.core.frozen import quick_init

ALGORITHM = "hmac-sha256"
# RFC 9110 optional whitespace: the only characters trimmed from field values
# (str.strip() would also drop control characters such as \x1f).
OWS = " \t"
ParamValue = int | str


class ComponentMissing(LookupError):
    """A covered component has no value in the message."""


@quick_init
@dataclass(frozen=True, slots=True)
class Message:
    """The parts of an HTTP request that signature components are derived from."""

    method: str
    path: str
    query: str = ""
    scheme: str = "https"
    authority: str = ""
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """RFC 9421 §2.1: values of all fields of ``name``, OWS-trimmed, joined by ", "."""
        values = self.headers.get(name)
        if not values:
            return None
        if len(values) == 1:  # the common case, without the generator and the join
            return values[0].strip(OWS)
        return ", ".join(v.strip(OWS) for v in values)


def declares_body(message: Message) -> bool:
    """Whether the request has a body by its HTTP/1.1 framing (a length or a coding)."""
    length = message.header("content-length")
    return message.header("transfer-encoding") is not None or (length is not None and length != "0")


def _derived(message: Message, name: str) -> str:
    path = message.path or "/"
    query = f"?{message.query}"
    if name == "@method":
        return message.method
    if name == "@path":
        return path
    if name == "@query":
        return query
    if name == "@authority":
        return message.authority.lower()
    if name == "@scheme":
        return message.scheme.lower()
    if name == "@request-target":
        return path + (query if message.query else "")
    if name == "@target-uri":
        target = path + (query if message.query else "")
        return f"{message.scheme.lower()}://{message.authority.lower()}{target}"
    raise ComponentMissing(name)


def component_value(message: Message, name: str) -> str:
    """The value of one covered component, or ``ComponentMissing``."""
    if name.startswith("@"):
        return _derived(message, name)
    value = message.header(name)
    if value is None:
        raise ComponentMissing(name)
    return value


def serialize_signature_params(components: Sequence[str], params: Mapping[str, ParamValue]) -> str:
    """The ``@signature-params`` value, as it also appears in Signature-Input.

    RFC 8941 §4.1 serialisation of an Inner List of Strings with String or
    Integer parameters: the only shapes the profile admits. Written out here
    because it runs on every request and ``http_sf.ser`` costs about a third of
    a verification; a property test holds it equal to ``http_sf.ser``.
    """
    inner = " ".join(_sf_string(c) for c in components)
    return f"({inner})" + "".join(f";{_sf_key(k)}={_sf_bare(v)}" for k, v in params.items())


def serialize_with_http_sf(components: Sequence[str], params: Mapping[str, ParamValue]) -> str:
    """The same value through the ``http_sf`` serialiser: the reference for tests."""
    inner: tuple[list[tuple[str, dict[str, str]]], dict[str, ParamValue]] = (
        [(c, {}) for c in components],
        dict(params),
    )
    # A one-member List serialises to exactly the Inner List with its parameters.
    return http_sf.ser([inner])  # type: ignore[list-item]


_SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_SF_INTEGER_MAX = 999_999_999_999_999


def _sf_key(key: str) -> str:
    if not _SF_KEY.fullmatch(key):
        raise ValueError("not an RFC 8941 key")
    return key


def _sf_string(value: str) -> str:
    if not (value.isascii() and value.isprintable()):
        raise ValueError("not an RFC 8941 String")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sf_bare(value: ParamValue) -> str:
    if type(value) is int and -_SF_INTEGER_MAX <= value <= _SF_INTEGER_MAX:
        return str(value)
    if type(value) is str:
        return _sf_string(value)
    raise ValueError("only Strings and Integers are signature parameters here")


def build_signature_base(
    message: Message,
    components: Sequence[str],
    params: Mapping[str, ParamValue],
    serialized_params: str | None = None,
) -> str:
    """RFC 9421 §2.5: one ``"name": value`` line per component, then the params line.

    ``serialized_params``: the params line's value when the caller holds it already
    (the verifier, for a Signature-Input member whose text is canonical); it must
    equal ``serialize_signature_params(components, params)``.
    """
    lines = [f'"{name}": {component_value(message, name)}' for name in components]
    if serialized_params is None:
        serialized_params = serialize_signature_params(components, params)
    lines.append(f'"@signature-params": {serialized_params}')
    return "\n".join(lines)


def hmac_sha256(secret: bytes, signature_base: str) -> bytes:
    """RFC 9421 §3.3.3: HMAC-SHA256 over the signature base's bytes."""
    return hmac.new(secret, signature_base.encode("utf-8"), hashlib.sha256).digest()
