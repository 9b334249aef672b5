"""One read of a policy directory: model, policy and every suite, all of one version.

A reload reads several files one after another. A ConfigMap update (the kubelet's
``..data`` swap), a directory symlink swap or a save landing between two reads
would test one version's policy against another version's suites: a bad change
rolled back while a reload read it went into force, tested against the
rolled-back suites, until the next poll. So the files' fingerprint (``stat`` of
each, following symlinks: size, mtime, ctime, inode; the list of suites too) is
taken before and after reading them all. Unchanged, every byte read belongs to
one version, and what is parsed, tested and hashed for ``GET /admin/policy`` is
exactly those bytes. Changed, the files are read again; after ``ATTEMPTS`` reads
the reload is refused (the last good policy stays; the watcher reloads once the
files settle). ``gateway policy lint|test|explain|...`` read through it too, so
what an admin tested is one version that existed, with the revision (and file
hashes) a reload of the same files reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from app.authz.source import FileRead, read_file
from app.authz.suite_files import suite_paths
from app.core.config import PolicySettings
from app.core.errors import ConfigError

Fingerprint = tuple[tuple[str, int, int, int, int], ...]

ATTEMPTS = 3
_PAUSE = 0.05  # seconds before a second read, twice that before a third


def policy_files(settings: PolicySettings) -> list[Path]:
    """The files a reload reads: model, policy and every suite."""
    return [settings.model_path, settings.policy_path, *suite_paths(settings.dir)]


def fingerprint_of(settings: PolicySettings) -> Fingerprint:
    """Name, size, mtime, ctime and inode of every policy file (missing files count too).

    The ctime is there for a change of mode or owner alone: a file the gateway could
    not read (a save with mode 600 by another user) that an admin then makes readable
    with ``chmod`` keeps its size, mtime and inode, and the reload it needs would
    otherwise never come (the last good policy stayed, with "Permission denied").
    """
    entries = []
    for path in policy_files(settings):
        try:
            stat = path.stat()
            entries.append(
                (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
            )
        except OSError:
            entries.append((str(path), -1, -1, -1, -1))
    return tuple(entries)


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """The bytes of model, policy and suites, read while none of the files changed."""

    model: FileRead
    policy: FileRead
    suites: tuple[FileRead, ...]
    fingerprint: Fingerprint

    @property
    def files(self) -> tuple[FileRead, ...]:
        return (self.model, self.policy, *self.suites)


def read_snapshot(settings: PolicySettings) -> PolicySnapshot:
    """Every file of one version; ``ConfigError`` when they kept changing while read."""
    snapshot = try_snapshot(settings)
    if snapshot is None:
        raise ConfigError(
            f"policy: the files in {settings.dir} changed while being read ({ATTEMPTS} times): "
            "nothing of them was used; they are read again once they have settled"
        )
    return snapshot


def try_snapshot(settings: PolicySettings) -> PolicySnapshot | None:
    """Every file of one version, or ``None`` when they changed during every read."""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(_PAUSE * attempt)
        before = fingerprint_of(settings)
        snapshot = PolicySnapshot(
            read_file(settings.model_path),
            read_file(settings.policy_path),
            tuple(read_file(path) for path in suite_paths(settings.dir)),
            before,
        )
        if fingerprint_of(settings) == before:
            return snapshot
    return None
