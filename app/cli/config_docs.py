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
        args.output.write_text(page, encoding="utf-8")
        return 0
    sys.stdout.write(page)
    return 0
