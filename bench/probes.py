"""In-process probes for two goals, each run in its own process with logs discarded.

``signature``: the verifier wired by ``create_app`` against one raw HMAC-SHA256
over the same 1 KB body (every call gets a freshly signed request, so a nonce
store sees no replay). ``decision``: the policy engine wired by ``create_app``
over a generated 100k-line policy, p50/p99 over a bounded number of decisions.
Both take what ``create_app`` builds, so they measure whatever main has.
Run: ``python -m bench.probes signature|decision [--lines N] [--budget-s S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.policygen import load_callers, write_policy
from bench.targets import BENCH_KEY_ENV, BENCH_KEY_ID, BENCH_SECRET


def _app(policy_dir: Path) -> Any:
    os.environ[BENCH_KEY_ENV] = BENCH_SECRET.decode()
    from app.core.config import Settings
    from app.core.logging import configure_logging
    from app.main import create_app

    configure_logging("INFO", "json")  # the decision log line is part of a decision's cost
    settings = Settings.model_validate(
        {
            "signing": {"keys": [{"id": BENCH_KEY_ID, "secret_env": BENCH_KEY_ENV}]},
            "policy": {"dir": str(policy_dir)},
            "services": {"findings": {"url": "http://127.0.0.1:9"}},
        }
    )
    return create_app(settings)


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


async def signature_probe(budget_s: float) -> dict[str, Any]:
    from app.authn.base import Message
    from app.authn.signer import sign_headers

    verifier = _app(write_policy(Path(tempfile.mkdtemp()) / "p", 100)).state.verifier
    body = os.urandom(1024)
    n = 2000
    messages = []
    for _ in range(n):
        headers: dict[str, list[str]] = {"x-auth-subject": ["alice"]}
        base = Message("POST", "/v1/x", "", "http", "gw", headers)
        signed = sign_headers(base, body, key_id=BENCH_KEY_ID, secret=BENCH_SECRET)
        headers.update({k: [v] for k, v in signed.items()})
        messages.append(Message("POST", "/v1/x", "", "http", "gw", headers))
    started = time.perf_counter()
    for message in messages:
        await _call(verifier.verify, message, body)
    verify_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for _ in range(n * 10):
        hmac.new(BENCH_SECRET, body, hashlib.sha256).digest()
    hmac_us = (time.perf_counter() - started) / (n * 10) * 1e6
    return {"verify_us": verify_us, "raw_hmac_us": hmac_us, "ratio": verify_us / hmac_us}


async def decision_probe(lines: int, budget_s: float) -> dict[str, Any]:
    policy_dir = write_policy(Path(tempfile.mkdtemp()) / "p", lines)
    started = time.perf_counter()
    policy = _app(policy_dir).state.policy
    load_s = time.perf_counter() - started
    callers = load_callers(lines, 256)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline and len(samples) < 20_000:
        subject, engagement = callers[len(samples) % len(callers)]
        obj = f"/v1/engagements/{engagement}/findings"
        t0 = time.perf_counter()
        await _call(policy.decide, subject, engagement, obj, "GET")
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return {
        "lines": lines,
        "load_s": load_s,
        "decisions": len(samples),
        "p50_us": samples[len(samples) // 2],
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("probe", choices=("signature", "decision"))
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--budget-s", type=float, default=15.0)
    args = parser.parse_args()
    if args.probe == "signature":
        result = asyncio.run(signature_probe(args.budget_s))
    else:
        result = asyncio.run(decision_probe(args.lines, args.budget_s))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
