"""``gateway sign``: sign a request with the gateway's profile, for curl.

The secret is read from an environment variable or a file, never from the
command line (where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.authn.identity import GROUPS_HEADER, SUBJECT_HEADER
from app.authn.keys import MIN_SECRET_BYTES
from app.authn.signer import DEFAULT_LABEL, message_from_httpx, sign_headers
from app.core.config import KEY_ID_PATTERN, SIGNATURE_LABEL_PATTERN
from app.domain.identity import SUBJECT_PATTERN, parse_groups

DEMO_KEY_ENV = "GATEWAY_DEMO_KEY"
# The documented demo key (README, Makefile): public, for the demo and the tests only.
DEMO_KEY = "demo-key-not-secret-0123456789abcdef"
# Headers ``-H`` may not set, and what sets them instead.
RESERVED_HEADERS = {
    SUBJECT_HEADER: "--subject sets it",
    GROUPS_HEADER: "--groups sets it",
    "signature": "gateway sign computes it",
    "signature-input": "gateway sign computes it",
    "content-digest": "gateway sign computes it",
    "content-length": "curl computes it",
    "host": "curl computes it from the URL",
}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 field name


class UsageError(Exception):
    """A command line ``gateway sign`` cannot act on; the message says why."""


def register(commands: Any) -> None:
    parser = commands.add_parser("sign", help="sign a request and print it as curl")
    parser.add_argument("url")
    parser.add_argument("-X", "--method", help="HTTP method (default GET; POST with -d, as curl)")
    parser.add_argument(
        "-d",
        "--data",
        default="",
        help="request body, or @FILE for a file's exact bytes (a JSON body sets the type)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add a header, covered by the signature (repeatable): -H 'Idempotency-Key: k-1'",
    )
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


def _secret(args: argparse.Namespace) -> bytes:
    if args.secret_file is not None:
        try:
            return bytes(args.secret_file.read_bytes().strip())
        except OSError as exc:
            raise UsageError(f"cannot read {args.secret_file}: {exc.strerror}") from None
    value = os.environ.get(args.secret_env)
    if value:
        return value.encode("utf-8")
    if args.secret_env == DEMO_KEY_ENV:
        raise UsageError(
            f"environment variable {DEMO_KEY_ENV} is not set. For the demo (make run), "
            f"export the documented demo key first:\n\n  export {DEMO_KEY_ENV}={DEMO_KEY}\n\n"
            "For another key, name its variable with --secret-env NAME or its file "
            "with --secret-file PATH."
        )
    raise UsageError(
        f"environment variable {args.secret_env} is not set: "
        f"export {args.secret_env}=<the key's secret>, or use --secret-file PATH"
    )


def parse_header(line: str) -> tuple[str, str]:
    """``'Name: value'`` as (lower-case name, value); ``UsageError`` when it is not a header."""
    name, colon, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
        raise UsageError(f"-H {line!r} is not a header: write -H 'Name: value'")
    if not value.isascii():
        # httpx sends header values as ASCII; the gateway's profile is ASCII in practice.
        raise UsageError(f"-H {line!r}: the value must be ASCII (percent-encode it)")
    lowered = name.lower()
    if lowered in RESERVED_HEADERS:
        raise UsageError(f"-H cannot set {name}: {RESERVED_HEADERS[lowered]}")
    return lowered, value


def request_body(data: str) -> tuple[bytes, Path | None]:
    """The body ``-d`` gives, and the file it came from (``@FILE``), if any."""
    if not data.startswith("@"):
        try:
            return data.encode("utf-8"), None
        except UnicodeEncodeError:  # raw bytes in argv: the printed curl could not carry them
            raise UsageError(
                "-d: the body is not UTF-8 text; give a binary body as -d @FILE"
            ) from None
    path = Path(data[1:])
    try:
        return path.read_bytes(), path
    except OSError as exc:
        raise UsageError(f"cannot read the body from {path}: {exc.strerror}") from None


def _content_type(body: bytes) -> str:
    try:
        json.loads(body)
    except ValueError:
        return "application/octet-stream"
    return "application/json"


def check_profile(args: argparse.Namespace, secret: bytes) -> None:
    """Refuse what no gateway could accept, before anything is signed.

    Each of these used to be signed and printed, then refused by the gateway with a
    reason that did not name the option: a key id outside the configuration's grammar
    (``unknown_key``), a secret shorter than any key may be (``unknown_key`` or
    ``signature_invalid``), a label that is no RFC 8941 key (the whole
    ``Signature-Input`` unparseable), an expiry at or before the creation time
    (``expired``), a subject or group outside the identity grammar (``identity_malformed``).
    A request meant to be refused (a negative test) is made with the reference signer
    (``app.authn.signer``), which signs whatever it is given.
    """
    for option, value in (("--subject", args.subject), ("--groups", args.groups)):
        if not value.isascii():
            raise UsageError(f"{option} {value!r}: must be ASCII, as the gateway's grammar is")
    if not SUBJECT_PATTERN.fullmatch(args.subject):
        raise UsageError(
            f"--subject {args.subject!r}: the gateway takes a letter or digit, then up to "
            "127 of letters, digits and ._@+- (it would answer 401 identity_malformed)"
        )
    if parse_groups(args.groups) is None:
        raise UsageError(
            f"--groups {args.groups!r}: each comma-separated group is a letter or digit, "
            "then up to 63 of letters, digits and ._:- (it would answer 401 identity_malformed)"
        )
    if not re.fullmatch(KEY_ID_PATTERN, args.key_id):
        raise UsageError(
            f"--key-id {args.key_id!r}: a key id is a letter or digit, then up to 63 of "
            "letters, digits and ._:- (no configured key can have this id: 401 unknown_key)"
        )
    if not re.fullmatch(SIGNATURE_LABEL_PATTERN, args.label):
        raise UsageError(
            f"--label {args.label!r}: a label is an RFC 8941 key: a lower-case letter or *, "
            "then up to 63 of a-z, 0-9 and _.*- (the gateway could not parse Signature-Input)"
        )
    if args.expires_in is not None and args.expires_in < 1:
        raise UsageError(f"--expires-in {args.expires_in}: must be at least 1 second")
    if len(secret) < MIN_SECRET_BYTES:
        raise UsageError(
            f"the secret is {len(secret)} bytes; a gateway key's secret is at least "
            f"{MIN_SECRET_BYTES} (no configured key can have it)"
        )


def build_request(args: argparse.Namespace, secret: bytes, body: bytes = b"") -> httpx.Request:
    """The signed request ``args`` describe, with ``body`` (``-d`` already read)."""
    check_profile(args, secret)
    headers = [(SUBJECT_HEADER, args.subject)]
    if args.groups:
        headers.append((GROUPS_HEADER, args.groups))
    extra = [parse_header(line) for line in args.header]
    headers += extra  # a name given twice is sent twice (and signed joined, RFC 9421)
    if body and "content-type" not in {name for name, _ in headers}:
        headers.append(("content-type", _content_type(body)))
    method = (args.method or ("POST" if body else "GET")).upper()
    request = httpx.Request(method, args.url, headers=headers, content=body)
    created = int(time.time())
    signed = sign_headers(
        message_from_httpx(request),
        body,
        key_id=args.key_id,
        secret=secret,
        created=created,
        expires=None if args.expires_in is None else created + args.expires_in,
        label=args.label,
        cover=[name for name, _ in extra],  # e.g. a decision request's X-Original-URI
    )
    request.headers.update(signed)
    return request


def as_curl(request: httpx.Request, body_file: Path | None = None) -> str:
    """The request as a curl command; a body read from ``body_file`` is sent from it."""
    # curl -X HEAD still waits for the body a Content-Length announces; --head does not.
    method = ["--head"] if request.method == "HEAD" else ["-X", request.method]
    parts = ["curl", "-sS", "-i", *method]
    for name, value in request.headers.multi_items():
        if name not in ("host", "content-length"):
            # curl drops "-H 'name: '"; "name;" is how it sends an empty field.
            parts += ["-H", f"{name}: {value}" if value else f"{name};"]
    if body_file is not None:
        parts += ["--data-binary", f"@{body_file}"]
    elif request.content:
        parts += ["--data-binary", request.content.decode("utf-8")]
    # curl reads [] and {} in a URL as globs (`?filter[severity]=high` is "bad range",
    # `{a,b}` two requests, neither the one signed): the URL goes as signed.
    parts += ["--globoff", str(request.url)]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    try:
        secret = _secret(args)
        body, body_file = request_body(args.data)
        request = build_request(args, secret, body)
    except UsageError as exc:
        print(f"gateway sign: {exc}", file=sys.stderr)
        return 2
    if args.headers_only:
        for name, value in request.headers.items():
            if name not in ("host", "content-length"):
                print(f"{name}: {value}")
    else:
        print(as_curl(request, body_file))
    return 0
