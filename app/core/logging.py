"""structlog set-up: JSON lines by default, a console renderer on a TTY.

``logcontext.merge`` comes first so every line carries what the edge bound
(``corr_id``) and what later stages added (``subject``, ``engagement``).

The gateway's own loggers are structlog-native: a level-filtering bound logger
(a disabled level costs one method call) rendering with orjson straight to bytes
on stderr. Routing them through the standard library cost about 56 µs a line
(LogRecord, handler, formatter) against about 10 here, and every request writes
three lines (edge, decision, downstream) — see bench/README.md. Standard-library
loggers (uvicorn, httpx) still go through a ``ProcessorFormatter`` with the same
chain, so every line on stderr has one shape.

Trade-off: the stdlib bridge would let extra ``logging`` handlers (syslog, files)
see the gateway's events; the native path writes JSON lines to stderr only, which
is where a container platform collects them. Route elsewhere at the platform.
The one exception is the decision log: ``log.decisions.file`` gives the lines of
the ``gateway.decision`` logger a file of their own (``DecisionSink``).

With tracing on, every line also carries the current span's ``trace_id`` and
``span_id`` (``app.core.tracing.add_trace_ids``; one attribute read when off).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from app.core import logcontext
from app.core.errors import ConfigError
from app.core.observability_settings import DecisionLogSettings
from app.core.sighup import on_sighup
from app.core.tracing import add_trace_ids

DECISION_LOGGER = "gateway.decision"
# Decision lines are the audit trail: written whatever ``log.level`` says (a WARNING
# level silenced every allow and deny, in the decision file too); ``log.decisions``
# alone says where they go.
_DECISION_WRAPPER = structlog.make_filtering_bound_logger(logging.INFO)


def decision_logger() -> Any:
    """The ``gateway.decision`` logger: the configured chain, at INFO whatever the level."""
    return structlog.wrap_logger(
        None, wrapper_class=_DECISION_WRAPPER, logger_factory_args=(DECISION_LOGGER,)
    )


def _orjson_dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def _orjson_bytes(obj: object, default: object = None) -> bytes:
    return orjson.dumps(obj, default=str)


def _to_bytes(logger: WrappedLogger, method: str, rendered: EventDict | str) -> bytes:
    return str(rendered).encode("utf-8", "replace")


# structlog's add_log_level: "warn" is the stdlib's alias, exception() logs at error.
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}


class LevelNameTime:
    """``add_log_level``, ``add_logger_name`` and ``TimeStamper(fmt="iso", utc=True)`` in one.

    The gateway writes three lines a request, so each processor call counts: this
    adds the same keys, in the same order, with the same values (the timestamp's
    date and time of day are formatted once a second, not on every line).
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["level"] = _LEVEL_OF_METHOD.get(method_name, method_name)
        event_dict["logger"] = logger.name
        event_dict["timestamp"] = self.timestamp(time.time_ns())
        return event_dict

    def timestamp(self, now_ns: int) -> str:
        """``datetime.fromtimestamp(now, UTC).isoformat()`` with ``Z`` for ``+00:00``."""
        second, nanos = divmod(now_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = nanos // 1000
        return f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"


class DecisionSink:
    """structlog processor: decision lines to a file of their own, one JSON object a line.

    Lines of the ``gateway.decision`` logger are appended, whole, with one
    ``write`` on an ``O_APPEND`` descriptor (several workers may share the file),
    with the same fields as on the main log. ``reopen`` (on SIGHUP) opens the path
    again, so logrotate may rename the file and signal, without ``copytruncate``.
    A line the file could not take stays on the main log, marked
    ``decision_file_error``, whatever ``main_log`` says.
    """

    def __init__(self, path: Path, *, main_log: bool = True, deny_only: bool = False) -> None:
        self.path = path
        self.main_log = main_log
        self.deny_only = deny_only
        self._fd = self._open()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, 0o640)

    def reopen(self) -> None:
        """Open the path again (a rotated file is left to its new name), then close the old."""
        fresh = self._open()
        old, self._fd = self._fd, fresh
        os.close(old)

    def close(self) -> None:
        os.close(self._fd)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if getattr(logger, "name", None) != DECISION_LOGGER:
            return event_dict
        if self.deny_only and event_dict.get("decision") != "deny":
            return self._main(event_dict)
        try:
            os.write(self._fd, orjson.dumps(event_dict, default=str) + b"\n")
        except OSError as exc:
            event_dict["decision_file_error"] = errno.errorcode.get(exc.errno or 0, "EIO")
            return event_dict
        return self._main(event_dict)

    def _main(self, event_dict: EventDict) -> EventDict:
        if not self.main_log:
            raise structlog.DropEvent
        return event_dict


class _Sinks:
    decisions: DecisionSink | None = None


_sinks = _Sinks()


def open_decision_sink(settings: DecisionLogSettings | None) -> DecisionSink | None:
    """The configured sink (the previous one closed); ``ConfigError`` if the file cannot open."""
    if _sinks.decisions is not None:
        _sinks.decisions.close()
        _sinks.decisions = None
    if settings is None or settings.file is None:
        return None
    try:
        sink = DecisionSink(settings.file, main_log=settings.main_log, deny_only=settings.deny_only)
    except OSError as exc:
        where = f"log.decisions.file: cannot open {settings.file}"
        raise ConfigError(f"{where}: {exc.strerror}") from None
    _sinks.decisions = sink
    return sink


def reopen_log_files() -> None:
    """Reopen the decision log file, if there is one (logrotate's ``postrotate``: SIGHUP)."""
    sink = _sinks.decisions
    if sink is None:
        return
    try:
        sink.reopen()
    except OSError as exc:  # keep writing to the open file rather than lose lines
        structlog.get_logger("gateway.ops").error(
            "decision_log_reopen_failed", path=str(sink.path), error=exc.strerror
        )
        return
    structlog.get_logger("gateway.ops").info("decision_log_reopened", path=str(sink.path))


@asynccontextmanager
async def reopen_log_files_on_sighup() -> AsyncIterator[None]:
    """While open (the app lifespan): SIGHUP reopens the decision log file, when one is set."""
    if _sinks.decisions is None:
        yield
        return
    with on_sighup(reopen_log_files):
        yield


def _shared_processors() -> list[Processor]:
    return [
        logcontext.merge,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    cache: bool = True,
    decisions: DecisionLogSettings | None = None,
) -> None:
    """Configure structlog and stdlib logging once per process.

    ``decisions``: where decision lines go (``log.decisions``); a file that cannot
    be opened is a ``ConfigError``.
    """
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared = _shared_processors()
    sink = open_decision_sink(decisions)
    sinks: list[Processor] = [sink] if sink is not None else []
    native: list[Processor]
    if use_console:
        native = [*shared, *sinks, structlog.dev.ConsoleRenderer(), _to_bytes]
    else:
        native = [
            logcontext.merge,
            add_trace_ids,
            LevelNameTime(),  # = shared[2:], in one call
            structlog.processors.format_exc_info,
            *sinks,
            structlog.processors.JSONRenderer(serializer=_orjson_bytes),
        ]
    structlog.configure(
        processors=native,
        # BytesLogger carries the logger's name, which add_logger_name reads.
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(level, shared, use_console)


def _route_stdlib(level: str, shared: list[Processor], use_console: bool) -> None:
    """Send standard-library records (uvicorn, httpx) through the same chain."""
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if use_console:
        final.append(structlog.dev.ConsoleRenderer())
    else:
        final.append(structlog.processors.format_exc_info)
        final.append(structlog.processors.JSONRenderer(serializer=_orjson_dumps))
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The edge logs each request with its corr_id; uvicorn's access line would duplicate it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
