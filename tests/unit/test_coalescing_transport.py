"""CoalescingTransport: one tick's writes leave in one call, in order, before any close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.edge.server import COALESCE_LIMIT, CoalescingTransport


class Recorder:
    """The wrapped transport: records what reaches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def _wrap() -> tuple[CoalescingTransport, Recorder]:
    inner = Recorder()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def _tick() -> None:
    await asyncio.sleep(0)


@pytest.mark.anyio
async def test_a_head_and_body_written_in_one_tick_leave_in_one_call() -> None:
    transport, inner = _wrap()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"ok")
    assert inner.calls == []  # nothing until the tick ends
    await _tick()
    assert inner.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]


@pytest.mark.anyio
async def test_writes_of_different_ticks_leave_separately_in_order() -> None:
    transport, inner = _wrap()
    for chunk in (b"a", b"b", b"c"):
        transport.write(chunk)
        await _tick()
    transport.write(memoryview(b"d"))
    transport.writelines([b"e", bytearray(b"f")])
    transport.write(b"")  # nothing to send, nothing scheduled
    await _tick()
    assert inner.calls == [("write", b"a"), ("write", b"b"), ("write", b"c"), ("write", b"def")]


@pytest.mark.anyio
async def test_close_sends_what_is_pending_first() -> None:
    transport, inner = _wrap()
    transport.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    transport.close()
    await _tick()  # the scheduled flush finds nothing left
    assert inner.calls == [("write", b"HTTP/1.1 408 Request Timeout\r\n\r\n"), ("close", None)]


@pytest.mark.anyio
async def test_write_eof_sends_what_is_pending_first() -> None:
    transport, inner = _wrap()
    transport.write(b"x")
    transport.write_eof()
    assert inner.calls == [("write", b"x"), ("write_eof", None)]


@pytest.mark.anyio
async def test_abort_drops_what_is_pending() -> None:
    transport, inner = _wrap()
    transport.write(b"never")
    transport.abort()
    await _tick()
    assert inner.calls == [("abort", None)]


@pytest.mark.anyio
async def test_nothing_is_written_to_a_closing_connection() -> None:
    transport, inner = _wrap()
    transport.write(b"late")
    inner.closing = True  # the peer went away within the tick
    await _tick()
    assert inner.calls == []
    assert transport.is_closing()


@pytest.mark.anyio
async def test_past_the_limit_a_tick_writes_at_once() -> None:
    transport, inner = _wrap()
    transport.write(b"h")
    transport.write(b"x" * COALESCE_LIMIT)
    assert inner.calls == [("write", b"h" + b"x" * COALESCE_LIMIT)]
    transport.write(b"tail")
    await _tick()
    assert inner.calls[-1] == ("write", b"tail")


@pytest.mark.anyio
async def test_anything_else_is_the_wrapped_transports() -> None:
    transport, _ = _wrap()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


class Backlogged(Recorder):
    """A transport whose buffer still holds bytes the client has not read."""

    def get_write_buffer_size(self) -> int:
        return 0 if self.closing and self.calls[-1][0] == "abort" else 4096


def _protocol(send_timeout: float) -> tuple[Any, Backlogged]:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from app.edge.server import GatewayHttpProtocol

    config = Config(app=lambda scope, receive, send: None)
    config.load()
    protocol = GatewayHttpProtocol(
        config=config, server_state=ServerState(), app_state={}, send_timeout=send_timeout
    )
    inner = Backlogged()
    protocol.connection_made(inner)  # type: ignore[arg-type]
    return protocol, inner


@pytest.mark.anyio
async def test_a_close_that_leaves_bytes_unsent_is_aborted_after_the_send_timeout() -> None:
    """uvloop's close waits for the client to read them, without a limit."""
    protocol, inner = _protocol(send_timeout=0.05)
    protocol.transport.close()
    protocol.resume_writing()  # a partial drain does not restart the clock
    await asyncio.sleep(0.2)
    assert ("abort", None) in inner.calls
    protocol.connection_lost(None)


@pytest.mark.anyio
async def test_a_full_buffer_on_a_closing_connection_is_still_aborted() -> None:
    protocol, inner = _protocol(send_timeout=0.05)
    protocol.pause_writing()
    inner.closing = True  # closing, waiting for the drain
    await asyncio.sleep(0.2)
    assert ("abort", None) in inner.calls
    protocol.connection_lost(None)


@pytest.mark.anyio
async def test_no_abort_once_the_connection_is_gone() -> None:
    protocol, inner = _protocol(send_timeout=0.05)
    protocol.pause_writing()
    protocol.transport.close()
    protocol.connection_lost(None)
    await asyncio.sleep(0.2)
    assert ("abort", None) not in inner.calls


@pytest.mark.anyio
async def test_a_client_that_drains_in_time_is_never_aborted() -> None:
    protocol, inner = _protocol(send_timeout=0.1)
    protocol.pause_writing()
    await asyncio.sleep(0.02)
    protocol.resume_writing()
    await asyncio.sleep(0.2)
    assert ("abort", None) not in inner.calls
    protocol.connection_lost(None)
