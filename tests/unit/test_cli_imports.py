"""The ``gateway`` command must not create metrics before ``serve`` chose where they live."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_importing_the_cli_creates_no_metrics() -> None:
    """prometheus-client opens its multiprocess files when a metric is defined, so
    ``app.ops.metrics`` imported with the CLI (before ``serve --workers`` sets
    PROMETHEUS_MULTIPROC_DIR) made every worker fail at start-up."""
    code = "import sys, app.cli.main; print('app.ops.metrics' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
