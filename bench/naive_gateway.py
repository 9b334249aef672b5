"""The naive gateway a user would first write: the issue's "what you could run instead".

FastAPI, a stock ``httpx.AsyncClient``, a hand-rolled RFC 9421 HMAC check (the
signature base rebuilt from the raw ``Signature-Input`` member, created within
300 s, no nonce store), and plain pycasbin ``enforce()`` over a generated policy
(1k lines in ``make bench``), called straight from the async endpoint.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import casbin
import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response

_INPUT = re.compile(r"^(\w+)=\(([^)]*)\)(.*)$")
_CREATED = re.compile(r";created=(\d+)")


def _component(request: Request, name: str) -> str:
    if name == "@method":
        return request.method
    if name == "@path":
        return request.url.path
    if name == "@query":
        return "?" + request.url.query
    value = request.headers.get(name)
    if value is None:
        raise HTTPException(401, "missing component")
    return value


def check_signature(request: Request, secret: bytes) -> str:
    """Return the signed subject, or raise 401."""
    match = _INPUT.match(request.headers.get("signature-input", ""))
    if match is None:
        raise HTTPException(401, "no signature")
    label, inner, params = match.groups()
    created = _CREATED.search(params)
    if created is None or abs(time.time() - int(created.group(1))) > 300:
        raise HTTPException(401, "stale")
    names = [n.strip('"') for n in inner.split()]
    lines = [f'"{n}": {_component(request, n)}' for n in names]
    lines.append(f'"@signature-params": ({inner}){params}')
    mac = hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest()
    given = request.headers.get("signature", "").removeprefix(f"{label}=:").rstrip(":")
    if not hmac.compare_digest(base64.b64encode(mac).decode(), given):
        raise HTTPException(401, "bad signature")
    return _component(request, "x-auth-subject")


def build_app(upstream: str, policy_dir: str, secret: bytes) -> FastAPI:
    enforcer = casbin.Enforcer(f"{policy_dir}/model.conf", f"{policy_dir}/policy.csv")
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["client"] = httpx.AsyncClient(base_url=upstream)
        yield
        await state["client"].aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/engagements/{engagement}/findings")
    async def findings(engagement: str, request: Request) -> Response:
        subject = check_signature(request, secret)
        if not enforcer.enforce(subject, engagement, request.url.path, request.method):
            raise HTTPException(403, "forbidden")
        resp = await state["client"].get(f"/engagements/{engagement}/findings")
        return Response(resp.content, resp.status_code, media_type="application/json")

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--policy-dir", required=True)
    parser.add_argument("--secret-env", required=True)
    args = parser.parse_args()
    secret = os.environ[args.secret_env].encode()
    uvicorn.run(
        build_app(args.upstream, args.policy_dir, secret),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
