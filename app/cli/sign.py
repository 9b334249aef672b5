"""``gateway sign``: sign a request with the gateway's profile, for curl.

The secret is read from an environment variable or a file, never from the
command line (where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.authn.identity import GROUPS_HEADER, SUBJECT_HEADER
from app.authn.signer import DEFAULT_LABEL, message_from_httpx, sign_headers

DEMO_KEY_ENV = "GATEWAY_DEMO_KEY"


def register(commands: Any) -> None:
    parser = commands.add_parser("sign", help="sign a request and print it as curl")
    parser.add_argument("url")
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-d", "--data", default="", help="request body (JSON sets the type)")
    parser.add_argument("--subject", required=True, help="X-Auth-Subject to assert")
    parser.add_argument("--groups", default="", help="comma-separated X-Auth-Groups")
    parser.add_argument("--key-id", default="demo-2026")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--secret-env", default=DEMO_KEY_ENV, help="env var holding the secret")
    secret.add_argument("--secret-file", type=Path, help="file holding the secret")
    parser.add_argument("--label", default=DEFAULT_LABEL, help="signature label (default sig1)")
    parser.add_argument("--expires-in", type=int, help="add expires=created+N seconds")
    parser.add_argument("--headers-only", action="store_true", help="print only the headers")
    parser.set_defaults(handler=run)


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.secret_file is not None:
        try:
            return bytes(args.secret_file.read_bytes().strip())
        except OSError as exc:
            print(f"gateway sign: cannot read {args.secret_file}: {exc.strerror}", file=sys.stderr)
            return None
    value = os.environ.get(args.secret_env)
    if not value:
        print(f"gateway sign: environment variable {args.secret_env} is not set", file=sys.stderr)
        return None
    return value.encode("utf-8")


def build_request(args: argparse.Namespace, secret: bytes) -> httpx.Request:
    """The signed request ``args`` describe."""
    headers = {SUBJECT_HEADER: args.subject}
    if args.groups:
        headers[GROUPS_HEADER] = args.groups
    body = args.data.encode("utf-8")
    if body:
        headers["content-type"] = "application/json"
    request = httpx.Request(args.method.upper(), args.url, headers=headers, content=body)
    created = int(time.time())
    signed = sign_headers(
        message_from_httpx(request),
        body,
        key_id=args.key_id,
        secret=secret,
        created=created,
        expires=None if args.expires_in is None else created + args.expires_in,
        label=args.label,
    )
    request.headers.update(signed)
    return request


def as_curl(request: httpx.Request) -> str:
    parts = ["curl", "-sS", "-i", "-X", request.method]
    for name, value in request.headers.items():
        if name not in ("host", "content-length"):
            parts += ["-H", f"{name}: {value}"]
    if request.content:
        parts += ["--data-binary", request.content.decode("utf-8")]
    parts.append(str(request.url))
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    secret = _secret(args)
    if secret is None:
        return 2
    request = build_request(args, secret)
    if args.headers_only:
        for name, value in request.headers.items():
            if name not in ("host", "content-length"):
                print(f"{name}: {value}")
    else:
        print(as_curl(request))
    return 0
