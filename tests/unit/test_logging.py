"""Logging set-up: one JSON line per event on stderr, levels filtered, stdlib routed.

``configure_logging`` changes process-wide state (structlog config, root handler),
so each case runs in a fresh interpreter and reads what it wrote to stderr.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest

from app.core import logging as logging_setup
from app.core.logging import LINE_BUFFER_LIMIT, LineBuffer
from app.edge.server import COALESCE_LIMIT, CoalescingTransport
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


def _stderr(script: str, arg: str) -> str:
    """What ``script`` (run with ``arg``) wrote to stderr, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", script, arg],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


def _run(fmt: str) -> list[str]:
    return _stderr(SCRIPT, fmt).strip().splitlines()


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


FORGED = "x\n2026-12-02T00:00:00Z [info     ] decision  decision=allow\x1b[2K\x9b"
FORGE_SCRIPT = """
import logging, sys, structlog
from app.core.logging import configure_logging
configure_logging("INFO", "console")
structlog.get_logger("gateway.admin").info("engagement_reopened", reason=sys.argv[1])
logging.getLogger("uvicorn.error").warning("stdlib %s", sys.argv[1])
try:
    raise ValueError("boom")
except ValueError:
    structlog.get_logger("gateway.edge").exception("unhandled_error")
"""


def test_console_lines_cannot_be_forged_by_a_logged_value() -> None:
    """ConsoleRenderer wrote strings raw: a reason with a line break printed a second,
    made-up line (and an escape sequence reached the terminal). Tracebacks keep theirs."""
    stderr = _stderr(FORGE_SCRIPT, FORGED)
    lines = stderr.splitlines()
    assert [n for n, line in enumerate(lines) if "decision=allow" in line] == [0, 1], lines
    assert "\\n2026-12-02" in lines[0]
    assert "\\x1b[2K\\x9b" in lines[0]
    assert "\x1b[2K" not in stderr  # the erase sequence itself (colours are the renderer's)
    assert "\x9b" not in stderr
    assert "Traceback" in stderr  # a traceback keeps its lines (rich may colour them)
    assert "ValueError" in stderr
    assert "boom" in stderr


def test_escape_controls_escapes_what_the_console_renderer_writes_raw() -> None:
    """The event always; a value only when the renderer would not ``repr`` it."""
    event = {
        "event": "msg\nforged line",
        "a": "plain é",
        "esc": "red\x1b[31m",
        "repred": "tab\there \x1b",
        "n": 3,
        "l": ["x\ny"],
    }
    out = logging_setup.escape_controls(None, "info", dict(event))
    assert out == {**event, "event": "msg\\nforged line", "esc": "red\\x1b[31m"}


class _Recorder:
    """A binary file that records each write (and each flush) it is given."""

    def __init__(self, events: list[tuple[str, bytes]] | None = None) -> None:
        self.events: list[tuple[str, bytes]] = [] if events is None else events
        self.closed = False

    @property
    def writes(self) -> list[bytes]:
        return [data for kind, data in self.events if kind == "log"]

    def write(self, data: bytes) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        self.events.append(("log", bytes(data)))
        return len(data)

    def flush(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")


def test_lines_of_one_tick_leave_in_one_write_in_order() -> None:
    file = _Recorder()
    lines = LineBuffer(file)  # type: ignore[arg-type]

    async def tick() -> list[bytes]:
        for n in range(3):
            lines.add(b"line %d\n" % n)
        before = list(file.writes)
        await asyncio.sleep(0)  # the end of the tick: the scheduled write runs
        lines.add(b"line 3\n")
        await asyncio.sleep(0)
        return before

    assert asyncio.run(tick()) == []
    assert file.writes == [b"line 0\nline 1\nline 2\n", b"line 3\n"]


def test_lines_outside_a_loop_are_written_at_once_after_those_queued() -> None:
    file = _Recorder()
    lines = LineBuffer(file)  # type: ignore[arg-type]
    lines.add(b"start-up\n")
    assert file.writes == [b"start-up\n"]

    async def queue_then_thread() -> None:
        lines.add(b"queued on the loop\n")
        worker = threading.Thread(target=lines.add, args=(b"from a thread\n",))
        worker.start()
        worker.join()

    asyncio.run(queue_then_thread())
    assert file.writes == [b"start-up\n", b"queued on the loop\nfrom a thread\n"]


def test_a_large_tick_is_written_once_past_the_limit() -> None:
    file = _Recorder()
    lines = LineBuffer(file)  # type: ignore[arg-type]
    line = b"x" * 1023 + b"\n"

    async def burst() -> int:
        for _ in range(LINE_BUFFER_LIMIT // len(line) + 1):
            lines.add(line)
        return len(file.writes)

    assert asyncio.run(burst()) == 1
    assert sum(map(len, file.writes)) == (LINE_BUFFER_LIMIT // len(line) + 1) * len(line)


def test_a_closed_file_loses_the_lines_without_raising() -> None:
    file = _Recorder()
    lines = LineBuffer(file)  # type: ignore[arg-type]
    file.closed = True
    lines.add(b"nowhere to go\n")  # outside a loop: written at once, which fails
    assert file.writes == []


class _Socket:
    """A transport recording each write it is given among ``events``."""

    def __init__(self, events: list[tuple[str, bytes]]) -> None:
        self.events = events

    def write(self, data: bytes) -> None:
        self.events.append(("socket", data))

    def is_closing(self) -> bool:
        return False


def test_a_decision_line_reaches_the_file_before_its_answer_reaches_the_socket() -> None:
    """The audit order: logged before the answer is written, so written before it too."""
    events: list[tuple[str, bytes]] = []
    lines = LineBuffer(_Recorder(events))  # type: ignore[arg-type]

    async def request() -> None:
        answers = CoalescingTransport(_Socket(events), asyncio.get_running_loop())  # type: ignore[arg-type]
        lines.add(b'{"event":"decision"}\n')
        answers.write(b"HTTP/1.1 200 OK\r\n\r\n")
        lines.add(b'{"event":"request_completed"}\n')
        await asyncio.sleep(0)

    asyncio.run(request())
    assert [kind for kind, _ in events] == ["log", "socket"]
    assert events[0][1].startswith(b'{"event":"decision"}\n')


def test_a_large_answer_leaves_after_the_lines_logged_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the coalescing limit an answer is sent at once: the queued lines first."""
    events: list[tuple[str, bytes]] = []
    lines = LineBuffer(_Recorder(events))  # type: ignore[arg-type]
    monkeypatch.setattr(logging_setup, "_stderr_lines", lines)  # the process's buffer

    async def request() -> None:
        answers = CoalescingTransport(_Socket(events), asyncio.get_running_loop())  # type: ignore[arg-type]
        lines.add(b'{"event":"decision"}\n')
        answers.write(b"HTTP/1.1 200 OK\r\n\r\n")
        answers.write(b"x" * (COALESCE_LIMIT + 10))
        await asyncio.sleep(0)

    asyncio.run(request())
    assert [kind for kind, _ in events] == ["log", "socket"]


def _events_of(script: str) -> list[str]:
    """The ``event`` of each JSON line a fresh interpreter running ``script`` logged."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line)["event"] for line in done.stderr.splitlines()]


def test_standard_library_lines_keep_their_place_among_the_gateways() -> None:
    assert _events_of(
        """
import asyncio, logging, structlog
from app.core.logging import configure_logging
configure_logging("INFO", "json")
async def main():
    structlog.get_logger("gateway.edge").info("first")
    logging.getLogger("uvicorn.error").warning("second")
    structlog.get_logger("gateway.edge").info("third")
asyncio.run(main())
"""
    ) == ["first", "second", "third"]


def test_lines_still_queued_when_the_loop_ends_are_written_at_exit() -> None:
    assert _events_of(
        """
import asyncio, structlog
from app.core.logging import configure_logging
configure_logging("INFO", "json")
async def main():
    structlog.get_logger("gateway.edge").info("last_words")
asyncio.run(main())
"""
    ) == ["last_words"]


def test_a_line_logged_while_the_buffer_writes_is_kept_not_a_deadlock() -> None:
    """A signal handler may log in the middle of a write on the same thread."""

    class Interrupting(_Recorder):
        def write(self, data: bytes) -> int:
            if data == b"outer\n":
                lines.add(b"from a handler\n")  # re-enters the buffer on this thread
            return super().write(data)

    file = Interrupting()
    lines = LineBuffer(file)  # type: ignore[arg-type]
    worker = threading.Thread(target=lines.add, args=(b"outer\n",), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the buffer deadlocked on its own lock"
    assert sorted(file.writes) == [b"from a handler\n", b"outer\n"]


def test_a_callers_malformed_tracestate_adds_no_line_to_the_log() -> None:
    """OpenTelemetry warned once a request about it, tracing on or off: any client could
    add a line to the log per request. The tracestate is still dropped; the edge's own
    line stays."""
    assert _events_of(
        """
import structlog
from app.core.logging import configure_logging
from app.core.tracing import parent_of
configure_logging("INFO", "json")
parent = parent_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "\\u00e9=1")
assert parent is not None and len(parent.trace_state) == 0
structlog.get_logger("gateway.edge").info("request_completed")
"""
    ) == ["request_completed"]
