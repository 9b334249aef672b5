"""The ``--port`` argument of the commands that listen: a TCP port, checked."""

from __future__ import annotations

import argparse


def tcp_port(text: str) -> int:
    """``0`` to ``65535`` (``0``: any free port); argparse's one-line error otherwise.

    ``int`` alone let ``--port 113181`` through: the socket layer keeps the low 16
    bits, so the gateway listened on 47645 while it logged 113181.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"{text} is not a port from 0 to 65535")
    return port
