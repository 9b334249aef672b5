"""Inbound signing keys: several may be active at once so proxies can rotate."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from app.core.config import KeySpec
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


class KeyRing:
    """Key id to key; replaced whole on reload, never mutated in place."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self._keys = {k.id: k for k in keys}

    def get(self, key_id: str) -> SigningKey | None:
        return self._keys.get(key_id)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

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
