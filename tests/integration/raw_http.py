"""HTTP/1.1 on a raw socket, for tests that must send or read what a client library would not
(pipelined requests, half a body, a stall, an answer left unread), and services that answer
what a server library would not (``RawService``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import httpx


def request_head(request: httpx.Request) -> bytes:
    """The request line and header fields of ``request`` as sent on the wire (no body)."""
    lines = [f"{request.method} {request.url.raw_path.decode()} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket, buffer: bytearray, seconds: float = 10) -> tuple[bytes, bytes]:
    """One whole answer (head, body by Content-Length) from ``buffer`` and the socket;
    what follows it stays in ``buffer`` (a pipelined next answer)."""
    deadline = time.monotonic() + seconds
    while b"\r\n\r\n" not in buffer:
        assert time.monotonic() < deadline, "no complete head"
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    buffer[:] = rest
    while len(buffer) < length:
        assert time.monotonic() < deadline, "no complete body"
        chunk = sock.recv(65536)
        assert chunk, "closed inside the body"
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return head, body


def as_response(head: bytes, body: bytes) -> httpx.Response:
    """An answer read by ``read_answer`` as an ``httpx.Response`` (for the usual asserts)."""
    lines = head.decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines[1:])]
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)


class RawService:
    """A service on a raw socket, in a thread: for each connection it reads the request
    head only, then ``answer(sock, head)`` does what a client library's server would not
    (answer before reading the body, close with the body unread, send odd framing).
    ``closed`` is set after each connection is closed."""

    def __init__(self, answer: Callable[[socket.socket, bytes], None]) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.heads: list[bytes] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawService:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            threading.Thread(target=self._converse, args=(sock,), daemon=True).start()

    def _converse(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(10)
            got = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in got and (chunk := sock.recv(65536)):
                    got += chunk
            if b"\r\n\r\n" in got:
                self.heads.append(got.partition(b"\r\n\r\n")[0])
                with contextlib.suppress(OSError):
                    self._answer(sock, got.partition(b"\r\n\r\n")[0])
        self.closed.set()
