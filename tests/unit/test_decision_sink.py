"""The decision log sink (app.core.logging.DecisionSink): a file of decision lines.

``configure_logging`` changes process-wide state, so the whole-chain cases run
in a fresh interpreter; the sink itself is a plain processor tested in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from pydantic import ValidationError

from app.core.errors import ConfigError
from app.core.logging import DecisionSink, open_decision_sink
from app.core.observability_settings import DecisionLogSettings
from tests.conftest import REPO


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


DECISION = Named("gateway.decision")


def line(decision: str = "allow", **fields: object) -> dict[str, object]:
    return {"event": "decision", "stage": "authz", "decision": decision, **fields}


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def test_decision_lines_go_to_the_file_and_stay_on_the_main_log(tmp_path: Path) -> None:
    sink = DecisionSink(tmp_path / "d.jsonl")
    assert sink(DECISION, "info", line(subject="alice")) == line(subject="alice")
    assert sink(Named("gateway.edge"), "info", {"event": "request_completed"})
    assert read(tmp_path / "d.jsonl") == [line(subject="alice")]
    sink.close()


def test_instead_of_the_main_log_and_deny_only(tmp_path: Path) -> None:
    sink = DecisionSink(tmp_path / "d.jsonl", main_log=False, deny_only=True)
    with pytest.raises(structlog.DropEvent):
        sink(DECISION, "info", line("allow"))
    with pytest.raises(structlog.DropEvent):
        sink(DECISION, "info", line("deny", reason="no_match"))
    assert read(tmp_path / "d.jsonl") == [line("deny", reason="no_match")]
    sink.close()


def test_reopen_follows_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    sink = DecisionSink(path)
    sink(DECISION, "info", line(n=1))
    path.rename(tmp_path / "d.jsonl.1")
    sink(DECISION, "info", line(n=2))  # still the open (renamed) file
    sink.reopen()
    sink(DECISION, "info", line(n=3))
    assert [e["n"] for e in read(tmp_path / "d.jsonl.1")] == [1, 2]
    assert [e["n"] for e in read(path)] == [3]
    sink.close()


def test_after_a_failed_reopen_every_line_stays_on_the_main_log_too(tmp_path: Path) -> None:
    """An audit: the directory deleted, the reopen on SIGHUP failed and the lines went on
    to the old (deleted) file: with main_log off, recorded nowhere one could read."""
    directory = tmp_path / "decisions"
    directory.mkdir()
    sink = DecisionSink(directory / "d.jsonl", main_log=False)
    (directory / "d.jsonl").unlink()
    directory.rmdir()
    with pytest.raises(FileNotFoundError):
        sink.reopen()
    kept = sink(DECISION, "info", line(n=1))
    assert kept["decision_file_error"] == "ENOENT"
    directory.mkdir()
    sink.reopen()  # the next SIGHUP, the directory back
    with pytest.raises(structlog.DropEvent):
        sink(DECISION, "info", line(n=2))  # to the file only again (main_log off)
    assert [e["n"] for e in read(directory / "d.jsonl")] == [2]
    sink.close()


def test_a_line_the_file_cannot_take_stays_on_the_main_log(tmp_path: Path) -> None:
    sink = DecisionSink(tmp_path / "d.jsonl", main_log=False)
    sink.close()  # the descriptor is gone: every write fails (EBADF)
    kept = sink(DECISION, "info", line())
    assert kept["decision_file_error"] == "EBADF"
    sink._fd = os.open(os.devnull, os.O_WRONLY)  # let close() at teardown succeed
    sink.close()


def test_an_unopenable_file_is_a_config_error(tmp_path: Path) -> None:
    settings = DecisionLogSettings(file=tmp_path / "missing-dir" / "d.jsonl")
    with pytest.raises(ConfigError, match=r"log\.decisions\.file: cannot open"):
        open_decision_sink(settings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"main_log": False}, "needs a file"),
        ({"deny_only": True}, "set file too"),
    ],
)
def test_settings_refuse_decisions_going_nowhere(values: dict[str, bool], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DecisionLogSettings(**values)


SCRIPT = """
import sys, structlog
from pathlib import Path
from app.core import logcontext
from app.core.logging import configure_logging
from app.core.observability_settings import DecisionLogSettings
settings = DecisionLogSettings(file=Path(sys.argv[2]), main_log=sys.argv[3] == "yes")
configure_logging("INFO", sys.argv[1], decisions=settings)
logcontext.bind(corr_id="c0ffee00")
structlog.get_logger("gateway.decision").info("decision", stage="authz", decision="deny")
structlog.get_logger("gateway.edge").info("request_completed", status=403)
"""


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter (logging set-up is process-wide), from the repo."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_file_gets_the_same_json_line_as_the_main_log(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    done = run_script(SCRIPT, fmt, str(path), "yes")
    (in_file,) = read(path)
    assert in_file["corr_id"] == "c0ffee00"
    assert in_file["logger"] == "gateway.decision"
    assert {"level", "timestamp", "stage", "decision"} <= set(in_file)
    if fmt == "json":
        main = [json.loads(text) for text in done.stderr.splitlines()]
        assert main[0] == in_file
        assert main[1]["event"] == "request_completed"
    else:
        assert "decision" in done.stderr
        assert "request_completed" in done.stderr


def test_instead_of_the_main_log_in_a_whole_chain(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    done = run_script(SCRIPT, "json", str(path), "no")
    assert [e["event"] for e in read(path)] == ["decision"]
    assert [json.loads(t)["event"] for t in done.stderr.splitlines()] == ["request_completed"]


LEVEL_SCRIPT = """
import sys
from pathlib import Path
import structlog
from app.core.logging import configure_logging, decision_logger
from app.core.observability_settings import DecisionLogSettings
configure_logging(sys.argv[1], "json", decisions=DecisionLogSettings(file=Path(sys.argv[2])))
decision_logger().info("decision", stage="authz", decision="deny")
structlog.get_logger("gateway.edge").info("request_completed", status=403)
structlog.get_logger("gateway.edge").warning("edge_warning")
"""


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
def test_a_quieter_log_level_never_silences_the_decision_lines(level: str, tmp_path: Path) -> None:
    """log.level WARNING wrote no allow or deny anywhere, the decision file included:
    an audit trail that a log level turned off without a word."""
    path = tmp_path / "decisions.jsonl"
    done = run_script(LEVEL_SCRIPT, level, str(path))
    assert [e["event"] for e in read(path)] == ["decision"]
    main = [json.loads(t)["event"] for t in done.stderr.splitlines()]
    assert main == (["decision", "edge_warning"] if level == "WARNING" else ["decision"])
