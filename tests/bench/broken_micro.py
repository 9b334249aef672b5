"""A micro-benchmark that fails, to show one failure does not stop the run."""

from __future__ import annotations


def main() -> dict[str, float]:
    raise RuntimeError("broken on purpose")
