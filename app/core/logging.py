"""structlog set-up: JSON lines by default, a console renderer on a TTY.

``merge_contextvars`` comes first so every line carries what the edge bound
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
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger


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


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto", *, cache: bool = True
) -> None:
    """Configure structlog and stdlib logging once per process."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared = _shared_processors()
    native: list[Processor]
    if use_console:
        native = [*shared, structlog.dev.ConsoleRenderer(), _to_bytes]
    else:
        native = [
            structlog.contextvars.merge_contextvars,
            LevelNameTime(),  # = shared[1:], in one call
            structlog.processors.format_exc_info,
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
