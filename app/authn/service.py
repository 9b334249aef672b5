"""The authn stage's one entry point: verify the signature, then claim its nonce(s).

``AuthnService.authenticate`` returns the caller's ``Identity`` or raises
``AuthenticationFailed`` (401, reason logged) or ``NonceStoreUnavailable``
(503). ``running()`` is entered in the app lifespan: it establishes the
nonce store's replay fence, starts key reloading and closes the store on
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

import structlog

from app.authn.base import Message, declares_body
from app.authn.nonces import Claim, NonceStore, create_nonce_store
from app.authn.rotation import KeyReloader, KeyStatus
from app.authn.verifier import Reason, SignatureVerifier
from app.core.config import Settings
from app.core.errors import AuthenticationFailed
from app.core.redis import SharedRedis
from app.domain.identity import Identity
from app.ops.metrics import count_signature_dated_ahead

log = structlog.get_logger("gateway.authn")

CLAIM_REASONS = {Claim.REPLAYED: Reason.REPLAYED, Claim.BEFORE_FENCE: Reason.REPLAY_WINDOW_RESET}
# The longest start-up wait for a fence set in the current second (bounds a skewed Redis clock).
MAX_FENCE_WAIT_SECONDS = 1.0
BodyReader = Callable[[], Awaitable[bytes]]
# A signature dated more than this after the gateway's clock (within the window, so
# accepted) is counted and logged: a signer's clock that runs ahead by d weakens the
# replay fence by d (signing.md, "Clocks"). Logged once a minute per key at most.
AHEAD_NOTICE_SECONDS = 5
AHEAD_LOG_INTERVAL_SECONDS = 60.0


class AuthnService:
    """Signature verification, replay protection and key rotation, wired together."""

    def __init__(self, verifier: SignatureVerifier, nonces: NonceStore, keys: KeyReloader) -> None:
        self.verifier = verifier
        self.nonces = nonces
        self.keys = keys
        self._ahead_logged: dict[str, float] = {}  # key id -> monotonic time of its last line

    @classmethod
    def from_settings(cls, settings: Settings, redis: SharedRedis | None = None) -> AuthnService:
        """Load keys and pick the nonce store; ``ConfigError`` if keys cannot be loaded.

        ``redis``: the process's shared pool; the nonce store closes it on shutdown.
        """
        signing = settings.signing
        ring = KeyReloader.initial_ring(signing)
        verifier = SignatureVerifier(ring, signing.max_skew_seconds, label=signing.label)
        nonces = create_nonce_store(settings, redis)
        return cls(verifier, nonces, KeyReloader(signing, verifier))

    async def authenticate(
        self,
        message: Message,
        body: bytes,
        now: float | None = None,
        *,
        streamed: bool = False,
        require: Collection[str] = (),
    ) -> Identity:
        """``authenticate_message`` for a body already in hand (or streamed: ``None``)."""

        async def read_body() -> bytes:
            return body

        reader = None if streamed else read_body
        return await self.authenticate_message(message, reader, now, require=require)

    async def authenticate_message(
        self,
        message: Message,
        read_body: BodyReader | None,
        now: float | None = None,
        *,
        require: Collection[str] = (),
    ) -> Identity:
        """The signed identity, accepted once: MAC, then the body's digest, then the nonce.

        The MAC is checked from the headers alone, so an unsigned or forged request
        never has its body read. ``read_body`` ``None``: the body streams later and
        its digest is checked as it passes (pass-through routes). ``require``:
        components the signature must cover besides the profile's (the decision
        endpoints' original-method and original-URI headers).
        """
        moment = time.time() if now is None else now
        verified = self.verifier.verify_signature(
            message, b"", moment, defer_digest=True, require=require
        )
        if declares_body(message) and message.header("content-digest") is None:
            raise AuthenticationFailed(Reason.COMPONENT_MISSING.value)
        if read_body is not None:
            self.verifier.verify_digest(message, await read_body())
        skew = self.verifier.max_skew
        ttl, until = verified.replay_ttl(moment, skew), verified.hold_until(skew)
        claim = await self.nonces.claim(
            verified.key_id, verified.nonce, verified.created, ttl, until=until
        )
        if claim is not Claim.CLAIMED:
            raise AuthenticationFailed(CLAIM_REASONS[claim].value)
        for other in verified.others:
            # The request's other signatures are used up with it: replayed with one of
            # them (reordered, alone, or once a new key makes it verify) it is refused.
            # One already used means this request is itself a replay or a splice. One
            # before the fence could never be accepted: nothing to remember.
            ttl, until = other.replay_ttl(moment, skew), other.hold_until(skew)
            claim = await self.nonces.claim(
                other.key_id, other.nonce, other.created, ttl, until=until
            )
            if claim is Claim.REPLAYED:
                raise AuthenticationFailed(Reason.REPLAYED.value)
        ahead = verified.created - math.floor(moment)
        if ahead > AHEAD_NOTICE_SECONDS:
            self._dated_ahead(verified.key_id, ahead)
        return verified.identity

    def _dated_ahead(self, key_id: str, seconds: int) -> None:
        count_signature_dated_ahead(key_id)
        now = time.monotonic()
        last = self._ahead_logged.get(key_id)
        if last is None or now - last >= AHEAD_LOG_INTERVAL_SECONDS:
            self._ahead_logged[key_id] = now
            log.warning("signature_dated_ahead", key_id=key_id, seconds_ahead=seconds)

    async def readiness(self) -> list[tuple[str, bool, str]]:
        """(name, ok, detail) checks for ``/readyz``: key ids and counts, never secrets."""
        status = self.keys.status()
        store_ok, store_detail = await self.nonces.check()
        return [
            # Ready only with a key a signature may use now: with every key outside its
            # validity, every signed request is refused (key_expired).
            ("signing_keys", bool(status.valid_ids), _describe_keys(status)),
            ("nonce_store", store_ok, store_detail),
        ]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            await wait_past_fence(await self.nonces.open())
            async with self.keys.running():
                yield
        finally:
            await self.nonces.aclose()


async def wait_past_fence(fence: float | None) -> None:
    """Serve only once a signature made now is not before the fence.

    ``created`` is whole seconds, so a signature made in the fence's own second
    is refused; waiting for the next second (at most once, at start-up, only
    when the fence was just set) spares the first requests that refusal.
    """
    if fence is None:
        return
    delay = math.ceil(fence) - time.time()
    if delay > 0:
        await asyncio.sleep(min(delay, MAX_FENCE_WAIT_SECONDS))


def _describe_keys(status: KeyStatus) -> str:
    detail = f"{len(status.key_ids)} key(s) loaded: {', '.join(status.key_ids) or 'none'}"
    if status.key_ids and status.valid_ids != status.key_ids:
        valid = ", ".join(status.valid_ids) or "none (every key is outside its validity)"
        detail += f"; valid now: {valid}"
    if status.reloads:
        detail += f"; reloaded {status.reloads} time(s)"
    if status.last_error is not None:
        # The reason (paths, variable names) is in the log; readiness is unauthenticated.
        detail += "; last reload failed, previous keys kept (see log)"
    return detail
