"""Micro-benchmark: inbound signature verification against a plain HMAC floor.

For 1 KB and 1 MB bodies, in one run: the cost of ``SignatureVerifier``
(parse both fields, check the profile, build the base, MAC, Content-Digest,
identity) and of the full authn step with an in-memory nonce claim, each
against one ``hmac.new(key, body, sha256).digest()`` over the same body bytes.
Figures are medians of repeats, in microseconds; the ratios are what to watch.

    .venv/bin/python -m bench.micro_signature
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from app.authn.base import Message
from app.authn.keys import KeyRing, SigningKey
from app.authn.nonces import MemoryNonceStore
from app.authn.rotation import KeyReloader
from app.authn.service import AuthnService
from app.authn.signer import sign_headers
from app.authn.verifier import SignatureVerifier
from app.core.config import SigningSettings

SECRET = b"bench-secret-not-for-production-0123456789"
KEY_ID = "bench-key"
SIZES = {"1 KB": 1024, "1 MB": 1024 * 1024}
ITERATIONS = {"1 KB": 2000, "1 MB": 40}
REPEATS = 7


def signed_message(body: bytes, now: int, nonce: str) -> Message:
    bare = Message(
        "POST",
        "/v1/engagements/acme-2026/findings",
        "page=2",
        "https",
        "gateway.internal",
        {"x-auth-subject": ["alice"], "x-auth-groups": ["analysts"]},
    )
    added = sign_headers(bare, body, key_id=KEY_ID, secret=SECRET, created=now, nonce=nonce)
    return replace(bare, headers={**bare.headers, **{k: [v] for k, v in added.items()}})


def per_call_us(fn: Callable[[int], object], iterations: int) -> float:
    started = time.perf_counter_ns()
    for i in range(iterations):
        fn(i)
    return (time.perf_counter_ns() - started) / iterations / 1000


def measure(label: str) -> dict[str, float]:
    body = bytes(range(256)) * (SIZES[label] // 256)
    now = int(time.time())
    n = ITERATIONS[label]
    verifier = SignatureVerifier(KeyRing([SigningKey(KEY_ID, SECRET)]), 300)
    message = signed_message(body, now, "fixed-nonce")
    # Distinct nonces so every authn call is a first use; signing is done up front.
    messages = [signed_message(body, now, f"nonce-{i}") for i in range(n)]
    loop = asyncio.new_event_loop()
    samples: dict[str, list[float]] = {"floor": [], "verify": [], "authn": []}
    for _ in range(REPEATS):
        store = MemoryNonceStore(capacity=n + 1, fence=now)
        authn = AuthnService(verifier, store, KeyReloader(SigningSettings(), verifier))

        async def authn_all(authn: AuthnService = authn) -> None:
            for m in messages:
                await authn.authenticate(m, body, now)

        samples["floor"].append(
            per_call_us(lambda _: hmac.new(SECRET, body, hashlib.sha256).digest(), n)
        )
        samples["verify"].append(per_call_us(lambda _: verifier.verify(message, body, now), n))
        started = time.perf_counter_ns()
        loop.run_until_complete(authn_all())
        samples["authn"].append((time.perf_counter_ns() - started) / n / 1000)
    loop.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> dict[str, dict[str, float]]:
    """Run the benchmark, print a markdown table and return the figures."""
    results: dict[str, dict[str, float]] = {}
    for label in SIZES:
        figures = measure(label)
        figures["verify_ratio"] = figures["verify"] / figures["floor"]
        figures["authn_ratio"] = figures["authn"] / figures["floor"]
        results[label] = figures
    print("| body | hmac floor µs | verify µs | verify / floor | verify + nonce µs | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, f in results.items():
        print(
            f"| {label} | {f['floor']:.2f} | {f['verify']:.2f} | {f['verify_ratio']:.2f}x "
            f"| {f['authn']:.2f} | {f['authn_ratio']:.2f}x |"
        )
    return results


if __name__ == "__main__":
    main()
