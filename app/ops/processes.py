"""Worker processes: their shared metrics directory and their start-up heap.

prometheus-client keeps each worker's values in files under
``PROMETHEUS_MULTIPROC_DIR``; the directory must exist before any worker imports
the client and must start empty, or counters of an earlier run leak in. The
client reads the variable once, at import: this module must not import it at
module level (``gateway serve`` imports this before choosing the directory).
"""

from __future__ import annotations

import gc
import os
import re
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


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def forget_dead_workers(directory: Path) -> list[int]:
    """Drop the live gauges of workers that died without their own clean exit.

    ``mark_worker_exited`` runs in a worker's shutdown; a worker killed (OOM, a
    crash, the supervisor's ``SIGKILL`` after a missed health ping) leaves its
    ``gauge_live*_<pid>.db`` files, and the merged view kept its last values for
    good: a breaker it saw open (``gateway_breaker_state == 2``) or its policy
    revision stayed there, and the alerts on them stayed on, until the gateway
    restarted. Called on each scrape; a pid that exists (or that this process may
    not signal) counts as live. Returns the pids forgotten.
    """
    from prometheus_client import multiprocess

    forgotten: list[int] = []
    for name in sorted({f.name for f in directory.glob("gauge_live*_*.db")}):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in forgotten or pid == os.getpid() or _alive(pid):
            continue
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]  # untyped upstream
        forgotten.append(pid)
    return forgotten


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours to judge
        return True
    return True


@contextmanager
def without_multiprocess_metrics() -> Iterator[None]:
    """Hide the metrics directory: a supervisor that only validates keeps its values in memory."""
    given = os.environ.pop(MULTIPROC_ENV, None)
    try:
        yield
    finally:
        if given is not None:
            os.environ[MULTIPROC_ENV] = given


# Young-generation threshold while serving (CPython's default is 700). Each request
# keeps a few dozen container objects alive while it is in flight, so at the default
# the young generation was collected about every 50 requests; at 10,000 about every
# 900, which cut the time in GC from ~15 to ~5 µs a request (measured in-process at
# 16 concurrent requests). It bounds only how much young cyclic garbage may wait.
GEN0_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Exempt what start-up built (modules, settings, the compiled policy) from GC scans.

    A full collection otherwise walks every object the policy and the libraries
    hold, on the event loop: tens of milliseconds at a 10k-line policy, seen as
    p99 spikes under load (``bench/``). Frozen objects are still freed by
    reference counting; only cyclic garbage among them would stay (there is none
    to speak of: they live for the whole process). Also sets ``GEN0_THRESHOLD``.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
