"""`gateway serve` refuses bad configuration with one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_KEY_ENV, TEST_SECRET, free_port

pytestmark = pytest.mark.integration


CONFIG = """
signing:
  keys: [{{id: k1, secret_env: {env}}}]
policy: {{dir: {policy}}}
services:
  findings: {{url: "{url}"}}
"""


@pytest.mark.parametrize(
    ("env", "policy", "url", "expected"),
    [
        (
            {},
            "policies",
            "http://127.0.0.1:9102",
            f"environment variable {TEST_KEY_ENV} is not set",
        ),
        (
            {TEST_KEY_ENV: TEST_SECRET.decode()},
            "nowhere",
            "http://127.0.0.1:9102",
            "is not a readable file",
        ),
        ({TEST_KEY_ENV: TEST_SECRET.decode()}, "policies", "ftp:/bad", "services.findings.url"),
    ],
)
def test_bad_config_stops_start_up_with_one_line(
    tmp_path: Path, env: dict[str, str], policy: str, url: str, expected: str
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG.format(env=TEST_KEY_ENV, policy=policy, url=url))
    clean_env = {k: v for k, v in os.environ.items() if k != TEST_KEY_ENV}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "serve",
            "--port",
            str(free_port()),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**clean_env, **env},
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: configuration error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("signing: [\n", "not valid YAML: expected the node content"),
        ("\tsigning: {}\n", "not valid YAML: found character '\\t'"),
        ("{a: !!python/object:os.system x}\n", "not valid YAML: could not determine a constructor"),
        ("- signing\n- policy\n", "the top level must be a mapping of sections, not a list"),
    ],
    ids=["unclosed", "tab", "python tag", "a list"],
)
def test_a_config_file_that_is_not_yaml_sections_stops_start_up_with_one_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Found by an audit: a YAML syntax error printed PyYAML's traceback and exited 1."""
    config = tmp_path / "gw.yaml"
    config.write_text(text)
    argv = [sys.executable, "-m", "app.cli.main", "serve", "--port", str(free_port())]
    result = subprocess.run(
        [*argv, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"gateway: configuration error: {config}: ")
    assert expected in lines[0]
