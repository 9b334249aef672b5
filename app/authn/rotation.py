"""Key rotation without restart: reload the key ring on file change and on SIGHUP.

``KeyReloader`` rebuilds the ring from ``signing.keys`` plus ``signing.keys_file``
and re-reads every secret (env var or file). A reload is a gate: a file that
does not parse, names an unset variable or a weak secret leaves the last good
ring in force; the failure is logged and shown in readiness (with the reason,
never a secret). The swap is one attribute assignment on the verifier, so a
request sees either the old ring or the new one, never a mix.

Two ways to notice a change were weighed: polling ``stat`` from a task (no
dependency, but a latency/CPU trade-off of its own) and ``watchfiles`` (inotify
on Linux, already installed with ``uvicorn[standard]``). ``watchfiles`` is used
on the keys file's directory, filtered to the file and ``..*`` entries, so an
atomic rename or a Kubernetes ``..data`` symlink swap is seen too; SIGHUP covers
secrets that live elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
import watchfiles

from app.authn.keys import KeyRing, load_keyring_from
from app.authn.verifier import SignatureVerifier
from app.core.config import SigningSettings
from app.core.errors import ConfigError
from app.core.sighup import on_sighup
from app.ops.metrics import start_key_series

log = structlog.get_logger("gateway.authn")

WATCH_DEBOUNCE_MS = 200
# Backstop: every few seconds, compare the file's stat with the last load, for
# changes made before the watch was set up or on filesystems without inotify.
WATCH_RECHECK_MS = 2000
Fingerprint = tuple[int, int, int, int] | None


def fingerprint(path: Path | None) -> Fingerprint:
    """(inode, mtime, ctime, size) of the file a path leads to; ``None`` if unreadable.

    The ctime is there for a change of mode or owner alone: a keys file saved
    unreadable (mode 000 by another user) and then made readable with ``chmod``
    keeps its inode, mtime and size. Where no inotify event reaches the watch (a
    keys file that is a symlink into another directory, a polled or network
    filesystem) the backstop is all there is, and it never reloaded.
    """
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """What readiness may show about the key ring: ids and counts, never secrets."""

    key_ids: tuple[str, ...]
    reloads: int
    last_error: str | None
    watching: bool
    # The keys a signature may use now (inside not_before / not_after).
    valid_ids: tuple[str, ...] = ()


class KeyReloader:
    """Owns the verifier's key ring: initial load, reloads, and their status."""

    def __init__(self, settings: SigningSettings, verifier: SignatureVerifier) -> None:
        self.settings = settings
        self.verifier = verifier
        self.reloads = 0
        self.last_error: str | None = None
        self.watching = False
        self._loaded = fingerprint(settings.keys_file)
        start_key_series(verifier.keyring.key_ids)

    @classmethod
    def initial_ring(cls, settings: SigningSettings) -> KeyRing:
        """The ring at start-up; a ``ConfigError`` here stops the gateway."""
        return load_keyring_from(settings.keys, settings.keys_file)

    def reload(self) -> bool:
        """Swap in a freshly loaded ring; on failure keep the last good one."""
        self._loaded = fingerprint(self.settings.keys_file)
        try:
            ring = load_keyring_from(self.settings.keys, self.settings.keys_file)
        except ConfigError as exc:
            self.last_error = exc.detail
            log.error("signing_keys_reload_failed", error=exc.detail, kept=self.key_ids)
            return False
        self.verifier.keyring = ring
        start_key_series(ring.key_ids)
        self.reloads += 1
        self.last_error = None
        # No key left is allowed (revoking the last key must not keep it working) but
        # refuses every signed request: a warning, as /readyz's signing_keys turns 503.
        emit = log.info if len(ring) else log.warning
        emit("signing_keys_reloaded", key_ids=ring.key_ids, count=len(ring))
        return True

    @property
    def key_ids(self) -> list[str]:
        return self.verifier.keyring.key_ids

    def status(self) -> KeyStatus:
        ring = self.verifier.keyring
        valid = tuple(ring.valid_ids(datetime.now(UTC)))
        return KeyStatus(tuple(ring.key_ids), self.reloads, self.last_error, self.watching, valid)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While open: reload on SIGHUP (main thread only) and on keys file change."""
        stop = asyncio.Event()
        watcher = None
        if self.settings.keys_file is not None and self.settings.watch_keys_file:
            keys_file = self.settings.keys_file.absolute()
            watcher = asyncio.create_task(self._watch(keys_file, stop))
        with on_sighup(self._on_sighup) as sighup:
            if not sighup:
                log.debug("sighup_reload_unavailable")
            try:
                yield
            finally:
                stop.set()
                if watcher is not None:
                    await watcher

    def _on_sighup(self) -> None:
        log.info("signing_keys_reload_requested", trigger="SIGHUP")
        self.reload()

    async def _watch(self, keys_file: Path, stop: asyncio.Event) -> None:
        def concerns_keys(_change: watchfiles.Change, path: str) -> bool:
            # The file itself (in place or renamed over) or a Kubernetes ``..data`` swap.
            name = Path(path).name
            return name == keys_file.name or name.startswith("..")

        self.watching = True
        try:
            async for changes in watchfiles.awatch(
                keys_file.parent,
                watch_filter=concerns_keys,
                debounce=WATCH_DEBOUNCE_MS,
                recursive=False,
                stop_event=stop,
                rust_timeout=WATCH_RECHECK_MS,
                yield_on_timeout=True,
            ):
                if changes or fingerprint(keys_file) != self._loaded:
                    log.info("signing_keys_reload_requested", trigger="file_change")
                    self.reload()
        except Exception:
            log.exception("signing_keys_watch_failed")
        finally:
            self.watching = False
