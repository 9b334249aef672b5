"""Logging set-up: one JSON line per event on stderr, levels filtered, stdlib routed.

``configure_logging`` changes process-wide state (structlog config, root handler),
so each case runs in a fresh interpreter and reads what it wrote to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import logging, sys, structlog
from app.core import logcontext
from app.core.logging import configure_logging
configure_logging("INFO", sys.argv[1])
logcontext.bind(corr_id="c0ffee00")
log = structlog.get_logger("gateway.edge")
log.info("request_completed", status=200)
log.debug("hidden_below_level")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("unhandled_error")
logging.getLogger("uvicorn.error").warning("from stdlib")
"""


def _run(fmt: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr.strip().splitlines()


def test_json_lines_carry_context_level_and_logger_name() -> None:
    lines = [json.loads(line) for line in _run("json")]
    assert [line["event"] for line in lines] == [
        "request_completed",
        "unhandled_error",
        "from stdlib",
    ]
    first, error, stdlib = lines
    assert first["corr_id"] == "c0ffee00"
    assert first["logger"] == "gateway.edge"
    assert first["level"] == "info"
    assert first["status"] == 200
    assert first["timestamp"].endswith("Z")
    assert "ZeroDivisionError" in error["exception"]
    assert error["level"] == "error"
    assert stdlib["logger"] == "uvicorn.error"
    assert stdlib["corr_id"] == "c0ffee00"


def test_console_format_renders_every_event_but_the_filtered_one() -> None:
    text = "\n".join(_run("console"))
    assert "request_completed" in text
    assert "gateway.edge" in text
    assert "from stdlib" in text
    assert "ZeroDivisionError" in text
    assert "hidden_below_level" not in text
