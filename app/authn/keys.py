"""Inbound signing keys: several may be active at once so proxies can rotate.

A key ring comes from ``signing.keys`` in the settings plus the optional
``signing.keys_file`` (YAML, ``keys:`` list of the same shape). Secrets are
only ever named (environment variable or file), never written in either.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from app.core.config import KeySpec, describe_validation_error
from app.core.errors import ConfigError

MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A shared HMAC key; ``repr`` never shows the secret."""

    id: str
    secret: bytes = field(repr=False)
    not_before: datetime | None = None
    not_after: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        if self.not_before is not None and now < self.not_before:
            return False
        return self.not_after is None or now < self.not_after

    def valid_at_time(self, now: float) -> bool:
        """``valid_at`` a Unix time; a key without a window builds no datetime (per request)."""
        if self.not_before is None and self.not_after is None:
            return True
        return self.valid_at(datetime.fromtimestamp(now, UTC))


class KeyRing:
    """Key id to key; replaced whole on reload, never mutated in place."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        keys_ = list(keys)
        self._keys = {k.id: k for k in keys_}
        # Keyed HMAC state per key, copied per message: saves re-keying on every request.
        self._macs = {k.id: hmac.new(k.secret, digestmod=hashlib.sha256) for k in keys_}

    def get(self, key_id: str) -> SigningKey | None:
        return self._keys.get(key_id)

    def mac(self, key_id: str, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the key ``key_id`` (which must be in the ring)."""
        state = self._macs[key_id].copy()
        state.update(data)
        return state.digest()

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def valid_ids(self, now: datetime) -> list[str]:
        """The ids of the keys inside their ``not_before`` / ``not_after`` at ``now``."""
        return sorted(key.id for key in self._keys.values() if key.valid_at(now))

    def __len__(self) -> int:
        return len(self._keys)


def _read_secret(spec: KeySpec, where: str) -> bytes:
    if spec.secret_env is not None:
        value = os.environ.get(spec.secret_env)
        if not value:
            raise ConfigError(f"{where}: environment variable {spec.secret_env} is not set")
        secret = value.encode("utf-8")
    else:
        assert spec.secret_file is not None
        try:
            secret = spec.secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {spec.secret_file}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{where}: secret is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def load_keyring(specs: Iterable[KeySpec]) -> KeyRing:
    """Resolve every key's secret; any missing or weak secret stops start-up."""
    keys = []
    for index, spec in enumerate(specs):
        where = f"signing.keys[{index}] (id={spec.id})"
        keys.append(SigningKey(spec.id, _read_secret(spec, where), spec.not_before, spec.not_after))
    return KeyRing(keys)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[KeySpec]


def read_keys_file(path: Path) -> list[KeySpec]:
    """The key specs in a YAML keys file; errors never quote the file's content."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return list(_KeysFile.model_validate(raw).keys)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None


def load_keyring_from(inline: Iterable[KeySpec], keys_file: Path | None) -> KeyRing:
    """Settings keys plus the keys file's keys; ids must be unique across both."""
    specs = list(inline)
    if keys_file is not None:
        specs += read_keys_file(keys_file)
    ids = [s.id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"signing keys: duplicate key id(s) {', '.join(duplicates)}")
    return load_keyring(specs)
