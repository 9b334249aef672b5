"""Worker processes and their shared metrics directory.

prometheus-client keeps each worker's values in files under
``PROMETHEUS_MULTIPROC_DIR``; the directory must exist before any worker imports
the client and must start empty, or counters of an earlier run leak in. The
client reads the variable once, at import: this module must not import it at
module level (``gateway serve`` imports this before choosing the directory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def multiprocess_metrics_dir(workers: int) -> Iterator[Path | None]:
    """Set up ``PROMETHEUS_MULTIPROC_DIR`` for ``workers`` > 1; remove it if we made it."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # values of an earlier run
            stale.unlink()
        yield path
        return
    if workers <= 1:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def mark_worker_exited() -> None:
    """Drop this worker's live gauges from the merged view (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # untyped upstream


@contextmanager
def without_multiprocess_metrics() -> Iterator[None]:
    """Hide the metrics directory: a supervisor that only validates keeps its values in memory."""
    given = os.environ.pop(MULTIPROC_ENV, None)
    try:
        yield
    finally:
        if given is not None:
            os.environ[MULTIPROC_ENV] = given
