"""`gateway sign` with a label and an expiry: accepted once, then replay-refused."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, TEST_KEY_ENV, TEST_KEY_ID, TEST_SECRET
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_label_and_expiry_options_are_signed_and_accepted_once(stack: Stack) -> None:
    url = stack.url + "/v1/engagements/acme-2026/findings"
    argv = [sys.executable, "-m", "app.cli.main", "sign", "--key-id", TEST_KEY_ID]
    argv += ["--secret-env", TEST_KEY_ENV, "--subject", "alice", "--headers-only"]
    result = subprocess.run(
        [*argv, "--label", "edge", "--expires-in", "30", url],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=True,
        env={**os.environ, TEST_KEY_ENV: TEST_SECRET.decode()},
    )
    headers = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert headers["signature-input"].startswith("edge=(")
    assert ";expires=" in headers["signature-input"]
    assert httpx.get(url, headers=headers).status_code == 200
    assert httpx.get(url, headers=headers).status_code == 401, "the nonce is spent"
