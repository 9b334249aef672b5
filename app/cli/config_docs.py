"""``gateway config-docs``: print, write or check the configuration reference page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.ops.config_reference import PAGE, render_reference


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "config-docs", help="the configuration reference, generated from the settings models"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--output", type=Path, help="write the page to this file")
    mode.add_argument(
        "--check", action="store_true", help=f"exit 1 if {PAGE.name} differs from the models"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    page = render_reference()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != page:
            print(f"gateway: {PAGE} is out of date; run: gateway config-docs --output {PAGE}")
            return 1
        return 0
    if args.output:
        return _write(args.output, page)
    sys.stdout.write(page)
    return 0


def _write(path: Path, page: str) -> int:
    """Write ``page`` whole (a temporary file beside it, then a rename); a path that
    cannot be written is one line and exit code 2, the page as it was."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        print(f"gateway: config-docs --output {path}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
