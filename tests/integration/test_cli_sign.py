"""`gateway sign` output is accepted by a running gateway: curl, headers, label and expiry."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, TEST_KEY_ENV, TEST_KEY_ID, TEST_SECRET
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def _sign(*args: str, cwd: Path = REPO) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "sign",
            "--key-id",
            TEST_KEY_ID,
            "--secret-env",
            TEST_KEY_ENV,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        check=True,
        env={**os.environ, TEST_KEY_ENV: TEST_SECRET.decode()},
    )
    return result.stdout


def _sign_fails(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit code and stderr of a ``gateway sign`` that is expected to refuse."""
    command = [sys.executable, "-m", "app.cli.main", "sign", *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, cwd=REPO, env=env, check=False
    )
    assert result.stdout == ""
    return result.returncode, result.stderr


def _curl_parts(command: str) -> tuple[dict[str, str], str | None, str]:
    """Headers, ``--data-binary`` argument and URL of a printed curl command."""
    argv = shlex.split(command)
    assert argv[:2] == ["curl", "-sS"]
    headers = dict(argv[i + 1].split(": ", 1) for i, arg in enumerate(argv) if arg == "-H")
    data = argv[argv.index("--data-binary") + 1] if "--data-binary" in argv else None
    return headers, data, argv[-1]


def test_signed_headers_are_accepted(stack: Stack) -> None:
    url = stack.url + "/v1/engagements/acme-2026/findings"
    lines = _sign("--subject", "alice", "--headers-only", url).strip().splitlines()
    headers = dict(line.split(": ", 1) for line in lines)
    assert set(headers) >= {"x-auth-subject", "signature-input", "signature"}
    assert httpx.get(url, headers=headers).status_code == 200


def test_signed_curl_with_body_is_accepted(stack: Stack) -> None:
    url = stack.url + "/v1/engagements/acme-2026/findings"
    argv = shlex.split(
        _sign(
            "--subject",
            "alice",
            "-X",
            "POST",
            "-d",
            '{"title": "Weak TLS", "severity": "low"}',
            url,
        )
    )
    assert argv[0] == "curl"
    headers = dict(argv[i + 1].split(": ", 1) for i, arg in enumerate(argv) if arg == "-H")
    body = argv[argv.index("--data-binary") + 1].encode()
    response = httpx.post(url, headers=headers, content=body)
    assert response.status_code == 201
    assert "content-digest" in headers


def test_missing_secret_env_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_NOPE"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "sign",
            "--subject",
            "a",
            "--secret-env",
            "GATEWAY_NOPE",
            "http://127.0.0.1:1/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "GATEWAY_NOPE is not set" in result.stderr


def test_label_and_expiry_options_are_signed_and_accepted_once(stack: Stack) -> None:
    url = stack.url + "/v1/engagements/acme-2026/findings"
    options = ("--label", "edge", "--expires-in", "30")
    out = _sign("--subject", "alice", "--headers-only", *options, url)
    headers = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert headers["signature-input"].startswith("edge=(")
    assert ";expires=" in headers["signature-input"]
    assert httpx.get(url, headers=headers).status_code == 200
    assert httpx.get(url, headers=headers).status_code == 401, "the nonce is spent"


def test_repeatable_headers_sign_a_close_with_its_idempotency_key(stack: Stack) -> None:
    url = stack.url + "/v1/engagements/acme-2026/close"
    command = _sign(
        "--subject",
        "bob",
        "-H",
        "Idempotency-Key: close-acme-cli-1",
        "--header",
        "X-Request-ID: cli-close-0001",
        "-d",
        '{"reason": "Retest complete; client signed off."}',
        url,
    )
    headers, data, target = _curl_parts(command)
    assert tuple(shlex.split(command)[3:5]) == ("-X", "POST"), "-d alone means POST, as in curl"
    assert headers["idempotency-key"] == "close-acme-cli-1"
    assert '"idempotency-key" "x-request-id"' in headers["signature-input"], "-H is signed"
    assert data is not None
    response = httpx.post(target, headers=headers, content=data.encode())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "closed"
    assert response.headers["x-request-id"] == "cli-close-0001"


def test_data_from_a_file_is_signed_and_sent_from_that_file(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "finding.json").write_bytes(b'{"title": "Weak TLS", "severity": "low"}\n')
    url = stack.url + "/v1/engagements/acme-2026/findings"
    command = _sign("--subject", "alice", "-d", "@finding.json", url, cwd=tmp_path)
    headers, data, target = _curl_parts(command)
    assert data == "@finding.json", "curl reads the same bytes the digest covers"
    assert headers["content-type"] == "application/json"
    body = (tmp_path / "finding.json").read_bytes()
    assert httpx.post(target, headers=headers, content=body).status_code == 201


def test_a_missing_demo_key_says_what_to_export() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_DEMO_KEY"}
    code, stderr = _sign_fails("--subject", "alice", "http://127.0.0.1:1/", env=env)
    assert code == 2
    assert "export GATEWAY_DEMO_KEY=demo-key-not-secret-0123456789abcdef" in stderr


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("X-Auth-Subject: bob", "--subject sets it"),
        ("signature: x", "gateway sign computes it"),
        ("Idempotency-Key close-1", "write -H 'Name: value'"),
        ("Bad Name: x", "write -H 'Name: value'"),
    ],
)
def test_a_header_sign_cannot_send_is_refused(header: str, why: str) -> None:
    env = {**os.environ, "GATEWAY_DEMO_KEY": "demo-key-not-secret-0123456789abcdef"}
    code, stderr = _sign_fails("--subject", "a", "-H", header, "http://127.0.0.1:1/", env=env)
    assert (code, why in stderr) == (2, True), stderr


def test_an_unreadable_data_file_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_DEMO_KEY": "demo-key-not-secret-0123456789abcdef"}
    missing = tmp_path / "nope.json"
    code, stderr = _sign_fails("--subject", "a", "-d", f"@{missing}", "http://x/", env=env)
    assert code == 2
    assert f"cannot read the body from {missing}" in stderr


def test_a_header_given_twice_is_sent_twice_and_an_empty_one_is_sent(stack: Stack) -> None:
    """An audit found the second of two -H of one name dropped, and an empty value
    printed as curl's "-H 'name: '", which curl does not send (the signature covered
    it: 401). Both are sent now; the gateway accepts the request as printed."""
    url = stack.url + "/v1/engagements/acme-2026/findings"
    command = _sign("--subject", "alice", "-H", "X-Ref: a", "-H", "X-Ref: b", "-H", "X-Note:", url)
    argv = shlex.split(command)
    given = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-H"]
    assert [h for h in given if h.startswith("x-ref")] == ["x-ref: a", "x-ref: b"]
    assert "x-note;" in given  # curl's spelling of an empty field
    assert '"x-ref" "x-note"' in next(h for h in given if h.startswith("signature-input"))
    headers = [tuple(h.split(": ", 1)) for h in given if ": " in h] + [("x-note", "")]
    assert httpx.get(url, headers=headers).status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="runs the printed curl command")
def test_a_signed_head_request_runs_as_printed(stack: Stack) -> None:
    """``curl -X HEAD`` waits for the body its answer's Content-Length announces: the
    printed command hung until the gateway closed the idle connection, then failed
    (curl exit 18). HEAD is printed as ``--head``, which reads the head only."""
    url = stack.url + "/v1/engagements/acme-2026/findings"
    argv = shlex.split(_sign("--subject", "alice", "-X", "HEAD", url))
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("HTTP/1.1 405"), ran.stdout  # HEAD is not served here


@pytest.mark.skipif(shutil.which("curl") is None, reason="runs the printed curl command")
@pytest.mark.parametrize("query", ["filter[severity]=high", "fields={title,severity}"])
def test_a_query_with_brackets_or_braces_runs_as_printed(stack: Stack, query: str) -> None:
    """An audit found curl reading [] and {} in the printed URL as globs: brackets
    failed ("bad range in URL", curl exit 3), braces sent two requests, neither the
    one signed (401 signature_invalid). The URL is printed with --globoff."""
    url = stack.url + "/v1/engagements/acme-2026/findings?" + query
    argv = shlex.split(_sign("--subject", "alice", url))
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("HTTP/1.1 ") == 1, ran.stdout
    assert ran.stdout.startswith("HTTP/1.1 200"), ran.stdout


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--subject", "alice", "-H", "X-Note: café"), "-H 'X-Note: café': the value must"),
        (("--subject", "zoë"), "--subject 'zoë': must be ASCII"),
        (("--subject", "alice", "--groups", "équipe"), "--groups 'équipe': must be ASCII"),
    ],
)
def test_a_value_that_is_not_ascii_is_a_usage_error(args: tuple[str, ...], why: str) -> None:
    """httpx sends header values as ASCII: such a value was a UnicodeEncodeError
    traceback (exit 1) instead of a line that says what to change."""
    env = {**os.environ, "GATEWAY_DEMO_KEY": "demo-key-not-secret-0123456789abcdef"}
    code, stderr = _sign_fails(*args, "http://127.0.0.1:1/", env=env)
    assert (code, why in stderr, "Traceback" in stderr) == (2, True, False), stderr


def test_an_inline_body_that_is_not_utf8_is_a_usage_error() -> None:
    """Raw bytes in ``-d`` (argv holds them as surrogates) were a UnicodeEncodeError
    traceback; such a body goes from a file, which is sent as it is."""
    env = {**os.environ, "GATEWAY_DEMO_KEY": "demo-key-not-secret-0123456789abcdef"}
    raw = os.fsdecode(b'{"title": "caf\xe9"}')
    code, stderr = _sign_fails("--subject", "alice", "-d", raw, "http://127.0.0.1:1/", env=env)
    assert (code, "Traceback" in stderr) == (2, False), stderr
    assert "-d: the body is not UTF-8 text; give a binary body as -d @FILE" in stderr


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--subject=-alice",), "--subject '-alice': the gateway takes a letter or digit"),
        (("--subject", "alice bob"), "--subject 'alice bob'"),
        (("--subject", "a" * 129), "up to 127"),
        (("--subject", "alice", "--groups", "ops,,dev"), "--groups 'ops,,dev': each"),
        (("--subject", "alice", "--groups", "ops team"), "identity_malformed"),
        (("--subject", "alice", "--key-id=-k1"), "--key-id '-k1': a key id is a letter or digit"),
        (("--subject", "alice", "--key-id", "k" * 65), "401 unknown_key"),
        (("--subject", "alice", "--label", "Sig1"), "--label 'Sig1': a label is an RFC 8941 key"),
        (("--subject", "alice", "--label", "1x"), "could not parse Signature-Input"),
        (("--subject", "alice", "--expires-in", "0"), "--expires-in 0: must be at least 1"),
        (("--subject", "alice", "--expires-in", "-5"), "--expires-in -5: must be at least 1"),
    ],
)
def test_what_no_gateway_accepts_is_refused_before_signing(args: tuple[str, ...], why: str) -> None:
    """Each was signed and printed, then refused by the gateway (unknown_key, an
    unparseable Signature-Input, expired, identity_malformed) with nothing naming the
    option that caused it."""
    env = {**os.environ, "GATEWAY_DEMO_KEY": "demo-key-not-secret-0123456789abcdef"}
    code, stderr = _sign_fails(*args, "http://127.0.0.1:1/", env=env)
    assert (code, why in stderr, "Traceback" in stderr) == (2, True, False), stderr


def test_a_secret_shorter_than_any_key_is_refused() -> None:
    env = {**os.environ, "GATEWAY_DEMO_KEY": "short-secret"}
    code, stderr = _sign_fails("--subject", "alice", "http://127.0.0.1:1/", env=env)
    assert code == 2, stderr
    assert "the secret is 12 bytes; a gateway key's secret is at least 32" in stderr
    assert "short-secret" not in stderr  # the secret itself is never printed


@pytest.mark.parametrize(
    "args",
    [
        ("--subject", "a" * 128, "--groups", "g" * 64),
        ("--subject", "svc.bot+ci@example.org", "--groups", "ops:read, dev_team"),
        ("--subject", "alice", "--key-id", "k" * 64, "--label", "*x_y.z-1"),
        ("--subject", "alice", "--expires-in", "1"),
    ],
)
def test_the_longest_and_widest_accepted_values_still_sign(args: tuple[str, ...]) -> None:
    """The checks refuse no value the gateway's own grammar takes."""
    out = _sign(*args, "--headers-only", "http://127.0.0.1:1/v1/x")
    assert "signature-input: " in out, out
    assert "signature: " in out, out
