"""``gateway``: one command, one sub-module per subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli import config_docs, demo, policy, serve, sign, stub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, stub, sign, demo, policy, config_docs):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
