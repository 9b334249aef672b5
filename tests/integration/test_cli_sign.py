"""`gateway sign` output is accepted by a running gateway: curl, headers, label and expiry."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, TEST_KEY_ENV, TEST_KEY_ID, TEST_SECRET
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def _sign(*args: str) -> str:
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
        cwd=REPO,
        check=True,
        env={**os.environ, TEST_KEY_ENV: TEST_SECRET.decode()},
    )
    return result.stdout


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
