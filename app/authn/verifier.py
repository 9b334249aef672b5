"""Inbound RFC 9421 verification: the gateway's front door.

``SignatureVerifier.verify_signature`` takes a ``Message`` and its body and
returns the ``VerifiedSignature`` (identity, key id, nonce, lifetime) or raises
``AuthenticationFailed`` with a machine reason (``Reason``) for the decision
log. Checks run from cheap to costly: parse, parameters, time window, required
coverage, key, MAC, body digest, identity. The replay check (a nonce claim) is
the caller's next step, after the MAC verified: see ``app.authn.service``.

Several signatures in one request: if ``label`` is configured only that label
is considered (the others are not even checked for shape: another hop's
signature is not the gateway's business; but one made with a key the gateway
holds is claimed with the winner, since renamed to the label it would verify);
otherwise labels are tried in Signature-Input order and the first that satisfies
the whole profile wins. If none does, the reason is the first tried label's
failure. At most
``MAX_SIGNATURES`` labels are accepted, each once (a repeated label is malformed:
RFC 8941 would keep only its last member). The winner's ``others`` are the
(key id, nonce) of every other considered signature: the caller claims them too,
so a captured request cannot be replayed with one of its other signatures
(reordered, or alone), whether that one verifies today or only after a key
rotation.

Time: ``created`` is whole seconds, so it is compared with the gateway's clock
in whole seconds: accepted while ``floor(now) - skew <= created <= floor(now) +
skew`` (as far behind as ahead).
"""

from __future__ import annotations

import base64
import hmac
import math
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import http_sf

from app.authn.base import ALGORITHM, ComponentMissing, Message, ParamValue, build_signature_base
from app.authn.digest import DigestError, verify_content_digest
from app.authn.identity import GROUPS_HEADER, SUBJECT_HEADER
from app.authn.keys import KeyRing
from app.core.errors import AuthenticationFailed
from app.core.frozen import quick_init
from app.domain.identity import SUBJECT_PATTERN, Identity, parse_groups

MAX_SIGNATURES = 8
MAX_NONCE_LENGTH = 128
REQUIRED_PARAMS = ("keyid", "created", "nonce")


class Reason(StrEnum):
    """Why a request was not authenticated; logged, never shown to the client."""

    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_MALFORMED = "signature_malformed"
    SIGNATURE_INVALID = "signature_invalid"
    PARAM_MISSING = "param_missing"
    UNKNOWN_KEY = "unknown_key"
    KEY_EXPIRED = "key_expired"
    ALGORITHM_UNSUPPORTED = "algorithm_unsupported"
    COMPONENT_MISSING = "component_missing"
    DIGEST_MISMATCH = "digest_mismatch"
    STALE = "stale"
    FUTURE = "future"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    REPLAY_WINDOW_RESET = "replay_window_reset"
    IDENTITY_UNSIGNED = "identity_unsigned"
    IDENTITY_MALFORMED = "identity_malformed"


@quick_init
@dataclass(frozen=True, slots=True)
class SignatureInput:
    label: str
    components: tuple[str, ...]
    params: Mapping[str, ParamValue]
    signature: bytes
    # The member's text when it is already the canonical serialisation of components
    # and params (the canonical-shape parser's inputs): the ``@signature-params`` value
    # without serialising it again. Not part of equality: both parsers mean the same.
    serialized: str | None = field(default=None, compare=False)


# How far another gateway's clock may be behind the claiming one's while the nonce
# still outlives the signature there: the TTL ends this much after the acceptance
# window on the claiming gateway's clock (signing.md §4). Costs only memory.
CLOCK_TOLERANCE_SECONDS = 2


def hold_until(created: int, expires: int | None, max_skew: int) -> int:
    """The Unix second until which a signature's nonce must be held, whatever clock
    judges it: the end of its acceptance plus ``CLOCK_TOLERANCE_SECONDS``.

    The Redis store also holds the nonce until then on Redis's own clock (not only for
    ``replay_ttl`` from the claiming gateway's ``now``), so a gateway whose clock was
    ahead of Redis's when it claimed, then stepped back (NTP), still finds it.
    """
    accepted_until = created + max_skew + 1
    if expires is not None:
        accepted_until = min(accepted_until, expires)
    return accepted_until + CLOCK_TOLERANCE_SECONDS


def longest_hold(max_skew: int) -> int:
    """The longest a signature can be acceptable on any one clock, plus the tolerance:
    ``created`` is accepted from ``max_skew`` before to ``max_skew`` after it."""
    return 2 * max_skew + 1 + CLOCK_TOLERANCE_SECONDS


def replay_ttl(created: int, expires: int | None, now: float, max_skew: int) -> int:
    """Seconds from ``now`` to keep a signature's nonce: until it is no longer accepted,
    plus ``CLOCK_TOLERANCE_SECONDS``.

    Accepted while ``floor(now) <= created + max_skew`` (so until ``created + max_skew
    + 1``) and ``now < expires``; at ``now`` + the answer - the tolerance it is refused,
    so it is refused by every gateway whose clock is behind by at most the tolerance
    when the nonce expires (a property test holds it). At least 1 + the tolerance.

    Without the tolerance the nonce expired exactly at the end of the window on the
    claiming gateway's clock, and a gateway less than a second behind (within NTP's
    usual bound) accepted the signature once more (an audit).
    """
    accepted_until = hold_until(created, expires, max_skew) - CLOCK_TOLERANCE_SECONDS
    return max(1, math.ceil(accepted_until - now)) + CLOCK_TOLERANCE_SECONDS


@dataclass(frozen=True, slots=True)
class OtherNonce:
    """Another signature's (key id, nonce) in a request whose winner verified."""

    key_id: str
    nonce: str
    created: int
    expires: int | None

    def replay_ttl(self, now: float, max_skew: int) -> int:
        """As long as that signature could be accepted, at most the window's width.

        Its ``created`` is not checked against the window (it did not have to
        verify), so a far-future one is remembered for ``2 * max_skew + 1`` s (plus the
        clock tolerance), not for as long as it claims.
        """
        return min(replay_ttl(self.created, self.expires, now, max_skew), longest_hold(max_skew))

    def hold_until(self, max_skew: int) -> int:
        """Until when to hold it on any clock (the store caps it at ``longest_hold``)."""
        return hold_until(self.created, self.expires, max_skew)


@quick_init
@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """A signature that satisfied the profile; its nonce (and ``others``) not yet claimed."""

    identity: Identity
    label: str
    key_id: str
    nonce: str
    created: int
    expires: int | None
    # The other considered signatures of the request, to be claimed with this one.
    others: tuple[OtherNonce, ...] = ()

    def replay_ttl(self, now: float, max_skew: int) -> int:
        """Seconds this signature stays acceptable: how long its nonce must be remembered."""
        return replay_ttl(self.created, self.expires, now, max_skew)

    def hold_until(self, max_skew: int) -> int:
        """The Unix second until which its nonce must be held on any clock."""
        return hold_until(self.created, self.expires, max_skew)


def other_nonces(
    candidates: Sequence[SignatureInput], winner: VerifiedSignature
) -> tuple[OtherNonce, ...]:
    """Each other candidate's distinct (key id, nonce), when it has both (and ``created``).

    A candidate without them could never be accepted, so there is nothing to claim.
    Parameters were type-checked by the parser (``_valid_param``).
    """
    seen = {(winner.key_id, winner.nonce)}
    found: list[OtherNonce] = []
    for candidate in candidates:
        params = candidate.params
        key_id, nonce, created = params.get("keyid"), params.get("nonce"), params.get("created")
        if not (isinstance(key_id, str) and isinstance(nonce, str) and type(created) is int):
            continue
        if (key_id, nonce) in seen:
            continue
        seen.add((key_id, nonce))
        expires = params.get("expires")
        found.append(OtherNonce(key_id, nonce, created, expires if type(expires) is int else None))
    return tuple(found)


def _fail(reason: Reason) -> AuthenticationFailed:
    return AuthenticationFailed(reason.value)


class _RepeatedLabel(ValueError):
    """A Dictionary member named twice."""


def _refuse_repeated_label(key: str, context: str) -> None:
    """RFC 8941 keeps a repeated member's last value and drops the others unseen; a
    dropped signature's nonce was then never claimed, so it could be sent again alone
    (two hops that both call theirs ``sig1``). Refused instead; repeated parameters
    are left to the parser (the last counts, as it signs)."""
    if context == "dictionary":
        raise _RepeatedLabel(key)


def _parse_dictionary(value: str) -> Mapping[str, object]:
    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=_refuse_repeated_label
        )
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


def _valid_param(key: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return False
    if key in ("created", "expires"):
        return type(value) is int and value >= 0
    if key == "nonce":
        return type(value) is str and 0 < len(value) <= MAX_NONCE_LENGTH
    if key in ("keyid", "alg", "tag"):
        return type(value) is str and bool(value)
    return True


def _lenient_params(raw: object) -> dict[str, ParamValue]:
    """Another label's parameters, unchecked: only the well-typed ones are kept."""
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if _valid_param(k, v)}


def _params(raw: object) -> dict[str, ParamValue]:
    if not isinstance(raw, dict):
        raise _fail(Reason.SIGNATURE_MALFORMED)
    params: dict[str, ParamValue] = {}
    for key, value in raw.items():
        if not _valid_param(key, value):
            raise _fail(Reason.SIGNATURE_MALFORMED)
        params[key] = value
    return params


# The shape every signer here and the reference signers send: one member in each field,
# single spaces, Integers and unescaped Strings only, canonically padded base64. Parsed
# by these expressions (about a tenth of http_sf's cost); anything else takes http_sf.
# tests/unit/test_signature_fields.py holds both paths to the same answers.
_SF_KEY = r"[a-z*][a-z0-9_.*-]*"
_SF_STRING = r'"[ !#-\[\]-~]*"'  # %x20-21 / %x23-5B / %x5D-7E: nothing to unescape
# Integers without leading zeros (nor "-0"): their text is then their serialisation.
_SF_PARAM = rf"(?:;{_SF_KEY}=(?:0|-?[1-9][0-9]{{0,14}}|{_SF_STRING}))"
_CANONICAL_INPUT = re.compile(
    rf"({_SF_KEY})=\(((?:{_SF_STRING}(?: {_SF_STRING})*)?)\)({_SF_PARAM}*)", re.ASCII
)
_B64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_CANONICAL_SIGNATURE = re.compile(rf"({_SF_KEY})=:({_B64}):", re.ASCII)
_STRING_ITEM = re.compile(r'"([^"]*)"', re.ASCII)
_PARAM_ITEM = re.compile(rf';({_SF_KEY})=(?:(-?[0-9]{{1,15}})|"([^"]*)")', re.ASCII)


def _parse_canonical(
    signature_input: str, signature: str, label: str | None = None
) -> list[SignatureInput] | None:
    """The one signature of the common canonical shape, or ``None`` for the full parser.

    ``label``: only a signature of that label is wanted (``[]`` if this one is another's).
    """
    shape = _CANONICAL_INPUT.fullmatch(signature_input)
    value = _CANONICAL_SIGNATURE.fullmatch(signature)
    if shape is None or value is None or shape.group(1) != value.group(1):
        return None
    if label is not None and shape.group(1) != label:
        return []
    # Items, not text split at spaces: a String may hold spaces itself ("a b").
    inner: list[tuple[str, dict[str, str]]] = [
        (name, {}) for name in _STRING_ITEM.findall(shape.group(2))
    ]
    raw: dict[str, ParamValue] = {}
    found = _PARAM_ITEM.findall(shape.group(3))
    for key, number, text in found:
        raw[key] = int(number) if number else text
    mac = base64.b64decode(value.group(2), validate=True)
    # Nothing in this shape is escaped, padded or re-spelt by serialising it again, so
    # the member's own text is the @signature-params value (a property test holds it),
    # unless a parameter repeats: the last one counts, and serialising drops the others.
    serialized = signature_input[shape.end(1) + 1 :] if len(found) == len(raw) else None
    return [SignatureInput(shape.group(1), _components(inner), _params(raw), mac, serialized)]


def parse_signature_headers(
    signature_input: str, signature: str, label: str | None = None
) -> list[SignatureInput]:
    """Every labelled signature in the two fields, in Signature-Input order.

    ``label``: only that label's signature, the others' members not checked at all
    (both fields must still be Dictionaries of at most ``MAX_SIGNATURES`` members).
    """
    canonical = _parse_canonical(signature_input, signature, label)
    if canonical is not None:
        return canonical
    return parse_with_http_sf(signature_input, signature, label)


def parse_with_http_sf(
    signature_input: str, signature: str, label: str | None = None
) -> list[SignatureInput]:
    """``parse_signature_headers`` through the full RFC 8941 parser (any shape).

    ``SIGNATURE_MISSING`` when no member (of ``label``, when given) is there.
    """
    inputs = _parse_dictionary(signature_input)
    signatures = _parse_dictionary(signature)
    if len(inputs) > MAX_SIGNATURES or len(signatures) > MAX_SIGNATURES:
        raise _fail(Reason.SIGNATURE_MALFORMED)
    parsed = []
    for name, member in inputs.items():
        if label is not None and name != label:
            continue
        if not isinstance(member, tuple) or name not in signatures:
            raise _fail(Reason.SIGNATURE_MALFORMED)
        sig_member = signatures[name]
        sig_value = sig_member[0] if isinstance(sig_member, tuple) else None
        if not isinstance(sig_value, bytes):
            raise _fail(Reason.SIGNATURE_MALFORMED)
        parsed.append(SignatureInput(name, _components(member[0]), _params(member[1]), sig_value))
    if not parsed:
        raise _fail(Reason.SIGNATURE_MISSING)
    return parsed


class SignatureVerifier:
    """Verifies the gateway's inbound signing profile against a key ring."""

    def __init__(
        self, keyring: KeyRing, max_skew_seconds: int = 300, label: str | None = None
    ) -> None:
        # Replaced whole by the key reloader; read once per request.
        self.keyring = keyring
        self.max_skew = max_skew_seconds
        self.label = label

    def verify(self, message: Message, body: bytes, now: float | None = None) -> Identity:
        """The signed identity (no replay check), or ``AuthenticationFailed``."""
        return self.verify_signature(message, body, now).identity

    def verify_signature(
        self,
        message: Message,
        body: bytes,
        now: float | None = None,
        *,
        defer_digest: bool = False,
        require: Collection[str] = (),
    ) -> VerifiedSignature:
        """The first signature that satisfies the profile, or the first one's failure.

        ``defer_digest`` skips the Content-Digest check for a body that is streamed:
        the caller must then verify the digest as the body passes (pass-through routes).
        ``require``: components a signature must cover on top of the profile's (the
        decision endpoint's original-method and original-URI headers).
        """
        candidates = self._candidates(message)
        moment = time.time() if now is None else now
        keyring = self.keyring
        failure: AuthenticationFailed | None = None
        for candidate in candidates:
            try:
                verified = self._verify_one(
                    message, body, candidate, moment, keyring, defer_digest, require
                )
            except AuthenticationFailed as exc:
                failure = failure or exc
                continue
            if len(candidates) > 1:
                verified = replace(verified, others=other_nonces(candidates, verified))
            if self.label is not None:
                verified = self._with_relabelable(message, verified, keyring)
            return verified
        assert failure is not None  # candidates is never empty
        raise failure

    def _with_relabelable(
        self, message: Message, verified: VerifiedSignature, keyring: KeyRing
    ) -> VerifiedSignature:
        """Label mode: also claim other labels' signatures made with the gateway's keys.

        A label is not part of what is signed, so such a signature, renamed to the
        configured label, verifies: unclaimed, the request could be sent again with
        it. Another hop's signatures (keys the gateway does not hold) stay unchecked.
        """
        value = message.header("signature-input") or ""
        if _CANONICAL_INPUT.fullmatch(value) is not None:  # one member: the winner's
            return verified
        try:
            members = _parse_dictionary(value)
        except AuthenticationFailed:
            return verified  # the label's own member parsed: nothing else to find
        found = [
            SignatureInput(name, (), _lenient_params(member[1]), b"")
            for name, member in members.items()
            if name != self.label and isinstance(member, tuple)
        ]
        ours = [c for c in found if keyring.get(str(c.params.get("keyid"))) is not None]
        extra = other_nonces(ours, verified)
        known = set(verified.others)
        added = tuple(o for o in extra if o not in known)
        return replace(verified, others=verified.others + added) if added else verified

    def _candidates(self, message: Message) -> Sequence[SignatureInput]:
        sig_input_value = message.header("signature-input")
        sig_value = message.header("signature")
        if sig_input_value is None or sig_value is None:
            raise _fail(Reason.SIGNATURE_MISSING)
        candidates = parse_signature_headers(sig_input_value, sig_value, self.label)
        if not candidates:  # the configured label is not there
            raise _fail(Reason.SIGNATURE_MISSING)
        return candidates

    def _verify_one(
        self,
        message: Message,
        body: bytes,
        candidate: SignatureInput,
        now: float,
        keyring: KeyRing,
        defer_digest: bool = False,
        require: Collection[str] = (),
    ) -> VerifiedSignature:
        params = candidate.params
        self._check_params(params, now)
        self._check_coverage(message, body, candidate.components, require)
        key_id = str(params["keyid"])
        self._check_key(keyring, key_id, now)
        try:
            base = build_signature_base(message, candidate.components, params, candidate.serialized)
        except ComponentMissing:
            raise _fail(Reason.COMPONENT_MISSING) from None
        if not hmac.compare_digest(keyring.mac(key_id, _octets(base)), candidate.signature):
            raise _fail(Reason.SIGNATURE_INVALID)
        if not defer_digest:
            self._check_digest(message, body, candidate.components)
        expires = params.get("expires")
        return VerifiedSignature(
            identity=self._identity(message, key_id),
            label=candidate.label,
            key_id=key_id,
            nonce=str(params["nonce"]),
            created=int(params["created"]),
            expires=None if expires is None else int(expires),
        )

    def _check_params(self, params: Mapping[str, ParamValue], now: float) -> None:
        if not all(name in params for name in REQUIRED_PARAMS):
            raise _fail(Reason.PARAM_MISSING)
        if params.get("alg", ALGORITHM) != ALGORITHM:
            raise _fail(Reason.ALGORITHM_UNSUPPORTED)
        created = int(params["created"])
        second = math.floor(now)  # created is whole seconds: as far behind as ahead
        if created > second + self.max_skew:
            raise _fail(Reason.FUTURE)
        if created < second - self.max_skew:
            raise _fail(Reason.STALE)
        expires = params.get("expires")
        if expires is not None and int(expires) <= now:
            raise _fail(Reason.EXPIRED)

    @staticmethod
    def _check_key(keyring: KeyRing, key_id: str, now: float) -> None:
        key = keyring.get(key_id)
        if key is None:
            raise _fail(Reason.UNKNOWN_KEY)
        if not key.valid_at_time(now):
            raise _fail(Reason.KEY_EXPIRED)

    def _check_coverage(
        self, message: Message, body: bytes, covered: tuple[str, ...], require: Collection[str]
    ) -> None:
        required = {"@method", "@path", SUBJECT_HEADER, *require}
        if message.query:
            required.add("@query")
        if body or message.header("content-digest") is not None:
            required.add("content-digest")
        if not required.issubset(covered):
            raise _fail(Reason.COMPONENT_MISSING)
        for name in (SUBJECT_HEADER, GROUPS_HEADER):
            if message.header(name) is not None and name not in covered:
                raise _fail(Reason.IDENTITY_UNSIGNED)

    def verify_digest(self, message: Message, body: bytes) -> None:
        """The body against ``Content-Digest``, after ``verify_signature(defer_digest=True)``.

        A verified signature covers the field whenever it is present, so only its
        presence (for a non-empty body) and its match are left to check.
        """
        if body or message.header("content-digest") is not None:
            self._check_digest(message, body, ("content-digest",))

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

    @staticmethod
    def _identity(message: Message, key_id: str) -> Identity:
        subject = message.header(SUBJECT_HEADER) or ""
        groups = parse_groups(message.header(GROUPS_HEADER))
        if not SUBJECT_PATTERN.fullmatch(subject) or groups is None:
            raise _fail(Reason.IDENTITY_MALFORMED)
        return Identity(subject=subject, groups=groups, key_id=key_id)


def _octets(base: str) -> bytes:
    """The signature base's bytes: the components' octets as received.

    A received component's characters are its octets (``message_from_scope`` decodes
    them as latin-1), so a field value that is not ASCII is verified as the bytes the
    signer sent, whatever their encoding: a signer that sends UTF-8 signs its UTF-8
    bytes (as the reference signer and the nginx module do). Such values are refused
    later on their own rules (a non-ASCII path or subject), not as a bad signature.
    A base with characters no octet decodes to (a ``Message`` built from text) is
    encoded as UTF-8, as the signer encodes it.
    """
    try:
        return base.encode("latin-1")
    except UnicodeEncodeError:
        return base.encode("utf-8")
