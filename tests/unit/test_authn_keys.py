"""Keys file, reload keeping the last good ring, and what readiness may show."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import ValidationError
from structlog.testing import capture_logs

from app.authn import rotation
from app.authn.keys import SigningKey, load_keyring_from, read_keys_file
from app.authn.rotation import KeyReloader, fingerprint
from app.authn.service import AuthnService
from app.core.config import SigningSettings
from app.core.errors import ConfigError
from tests.conftest import TEST_KEY_ENV, TEST_SECRET, make_settings

OTHER_ENV = "GATEWAY_TEST_KEY_2"
OTHER_SECRET = "second-test-secret-not-for-production-9876"


def _keys_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(body)
    return path


@pytest.fixture
def two_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
    monkeypatch.setenv(OTHER_ENV, OTHER_SECRET)


@pytest.mark.usefixtures("two_secrets")
def test_keys_file_adds_keys_with_validity(tmp_path: Path) -> None:
    secret_file = tmp_path / "k3.secret"
    secret_file.write_text(OTHER_SECRET + "\n")
    path = _keys_file(
        tmp_path,
        f"keys:\n  - id: k2\n    secret_env: {OTHER_ENV}\n"
        "    not_after: 2030-01-01T00:00:00Z\n"
        f"  - id: k3\n    secret_file: {secret_file}\n",
    )
    ring = load_keyring_from(SigningSettings(keys=[]).keys, path)
    assert ring.key_ids == ["k2", "k3"]
    k3 = ring.get("k3")
    assert k3 is not None
    assert k3.secret == OTHER_SECRET.encode()
    assert OTHER_SECRET not in repr(k3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("keys: [", "invalid YAML at line"),
        ("keys:\n  - id: k9\n    secret: inline-secret-value-0123456789abcdef\n", "keys.0"),
        ("keys:\n  - id: k9\n    secret_env: GATEWAY_UNSET_FOR_TEST\n", "is not set"),
        ("nothing: here\n", "keys"),
    ],
)
def test_bad_keys_file_is_one_readable_error_without_content(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_keyring_from([], _keys_file(tmp_path, body))
    assert message in caught.value.detail
    assert "inline-secret-value" not in caught.value.detail


@pytest.mark.usefixtures("two_secrets")
def test_duplicate_ids_across_settings_and_file(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, f"keys:\n  - id: test-2026\n    secret_env: {OTHER_ENV}\n")
    settings = make_settings()
    with pytest.raises(ConfigError, match="duplicate key id"):
        load_keyring_from(settings.signing.keys, path)


@pytest.mark.usefixtures("two_secrets")
def test_a_reload_that_leaves_no_key_is_taken_and_warned(tmp_path: Path) -> None:
    """Revoking the last key must not keep it working, so an empty ring is loaded; it
    refuses every signed request, so its line is a warning (it was at info)."""
    path = _keys_file(tmp_path, f"keys:\n  - id: k2\n    secret_env: {OTHER_ENV}\n")
    authn = AuthnService.from_settings(make_settings(signing={"keys": [], "keys_file": str(path)}))
    path.write_text("keys: []\n")
    with capture_logs() as logs:
        assert authn.keys.reload()
    assert authn.verifier.keyring.key_ids == []
    lines = [(line["event"], line["log_level"], line["count"]) for line in logs]
    assert lines == [("signing_keys_reloaded", "warning", 0)]


@pytest.mark.usefixtures("two_secrets")
def test_a_key_added_by_a_reload_has_its_dated_ahead_series_at_zero(tmp_path: Path) -> None:
    """prom33: the series an alert on a signer's clock watches was born at its first
    event (increase() saw nothing); each key's starts at 0, a reloaded one's too."""
    path = _keys_file(tmp_path, f"keys:\n  - id: k2\n    secret_env: {OTHER_ENV}\n")
    authn = AuthnService.from_settings(make_settings(signing={"keys": [], "keys_file": str(path)}))
    assert _dated_ahead_count("k2") == 0.0
    path.write_text(f"keys:\n  - id: k-added-later\n    secret_env: {OTHER_ENV}\n")
    assert _dated_ahead_count("k-added-later") is None
    assert authn.keys.reload()
    assert _dated_ahead_count("k-added-later") == 0.0


def _dated_ahead_count(key_id: str) -> float | None:
    return REGISTRY.get_sample_value("gateway_signatures_dated_ahead_total", {"key_id": key_id})


def test_missing_keys_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_keys_file(tmp_path / "absent.yaml")


@pytest.mark.usefixtures("two_secrets")
def test_reload_swaps_the_ring_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, f"keys:\n  - id: k2\n    secret_env: {OTHER_ENV}\n")
    settings = make_settings(signing={"keys": [], "keys_file": str(path)})
    authn = AuthnService.from_settings(settings)
    reloader: KeyReloader = authn.keys
    assert reloader.key_ids == ["k2"]
    path.write_text(
        f"keys:\n  - id: k2\n    secret_env: {OTHER_ENV}\n"
        f"  - id: k3\n    secret_env: {TEST_KEY_ENV}\n"
    )
    assert reloader.reload()
    assert authn.verifier.keyring.key_ids == ["k2", "k3"]
    path.write_text("keys: [")
    assert not reloader.reload()
    assert authn.verifier.keyring.key_ids == ["k2", "k3"]
    checks = asyncio.run(authn.readiness())
    keys_check = next(c for c in checks if c[0] == "signing_keys")
    assert keys_check[1] is True
    assert "k2, k3" in keys_check[2]
    assert "last reload failed" in keys_check[2]
    assert str(path) not in keys_check[2]


@pytest.mark.usefixtures("two_secrets")
def test_a_ring_with_no_key_valid_now_is_not_ready() -> None:
    """Found by an audit: a ring whose only key had expired was ready while every
    signed request got 401 key_expired. Ready again as soon as one key is valid."""
    expired = {"id": "old", "secret_env": TEST_KEY_ENV, "not_after": "2020-01-01T00:00:00Z"}
    future = {"id": "next", "secret_env": TEST_KEY_ENV, "not_before": "2999-01-01T00:00:00Z"}
    authn = AuthnService.from_settings(make_settings(signing={"keys": [expired, future]}))
    check = next(c for c in asyncio.run(authn.readiness()) if c[0] == "signing_keys")
    assert check[1] is False
    assert "2 key(s) loaded: next, old; valid now: none" in check[2]
    current = {"id": "now", "secret_env": TEST_KEY_ENV}
    authn = AuthnService.from_settings(make_settings(signing={"keys": [expired, current]}))
    check = next(c for c in asyncio.run(authn.readiness()) if c[0] == "signing_keys")
    assert check[1] is True
    assert "valid now: now" in check[2]


def test_empty_ring_is_not_ready() -> None:
    authn = AuthnService.from_settings(make_settings(signing={"keys": []}))
    checks = dict((name, ok) for name, ok, _ in asyncio.run(authn.readiness()))
    assert checks == {"signing_keys": False, "nonce_store": True}


@pytest.mark.usefixtures("two_secrets")
def test_change_made_as_watching_starts_is_still_picked_up(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, f"keys:\n  - id: k2\n    secret_env: {OTHER_ENV}\n")
    settings = make_settings(signing={"keys": [], "keys_file": str(path)})
    authn = AuthnService.from_settings(settings)

    async def scenario() -> list[str]:
        async with authn.running():
            # Written before the watch is registered: only the stat backstop can see it.
            path.write_text(f"keys:\n  - id: k4\n    secret_env: {OTHER_ENV}\n")
            for _ in range(150):  # bounded wait for the reload, not a timing assertion
                if authn.verifier.keyring.key_ids == ["k4"]:
                    break
                await asyncio.sleep(0.1)
        return authn.verifier.keyring.key_ids

    assert asyncio.run(scenario()) == ["k4"]


@pytest.mark.parametrize("field", ["not_before", "not_after"])
def test_a_key_window_without_a_time_zone_is_refused_at_load(field: str) -> None:
    """Found by a review: a naive time loaded, then could not be compared with the
    clock, so every request signed with the key failed with a TypeError (a 500)."""
    naive = {"id": "k", "secret_env": TEST_KEY_ENV, field: "2099-01-01T00:00:00"}
    with pytest.raises(ValidationError, match="timezone"):
        make_settings(signing={"keys": [naive]})
    aware = {"id": "k", "secret_env": TEST_KEY_ENV, field: "2099-01-01T00:00:00+01:00"}
    assert make_settings(signing={"keys": [aware]}).signing.keys[0].id == "k"


def test_a_keys_file_with_a_naive_window_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - id: k\n    secret_env: {TEST_KEY_ENV}\n    not_after: 2099-01-01T00:00:00\n"
    )
    with pytest.raises(ConfigError, match="not_after"):
        read_keys_file(path)


_MOMENT = st.integers(min_value=0, max_value=4_000_000_000)


@given(_MOMENT, st.one_of(st.none(), _MOMENT), st.one_of(st.none(), _MOMENT))
def test_valid_at_time_is_valid_at_the_same_moment(
    now: int, before: int | None, after: int | None
) -> None:
    """The per-request form (a Unix time) answers as the datetime one, windows or not."""
    at = {None: None} | {
        t: datetime.fromtimestamp(t, UTC) for t in (before, after) if t is not None
    }
    key = SigningKey("k", b"s", at.get(before), at.get(after))
    assert key.valid_at_time(now) == key.valid_at(datetime.fromtimestamp(now, UTC))


def test_the_keys_fingerprint_sees_a_change_of_mode_alone(tmp_path: Path) -> None:
    """A ``chmod`` keeps inode, mtime and size; the fingerprint must still differ."""
    path = _keys_file(tmp_path, "keys: []\n")
    path.chmod(0o000)
    before = fingerprint(path)
    path.chmod(0o644)
    assert fingerprint(path) != before


@pytest.mark.usefixtures("two_secrets")
def test_the_watcher_reloads_a_keys_file_made_readable_by_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keys file saved unreadable (mode 000 by another user) is refused; the admin's
    ``chmod`` then changes only the mode. The keys file is a symlink into another
    directory, so no inotify event reaches the watch and only the stat backstop can
    see it (it kept the old ring, "Permission denied", until some other edit). Tests
    run as root, which reads any mode, so the refused read is played by the first
    reload."""
    real_dir = tmp_path / "secrets"
    real_dir.mkdir()
    target = real_dir / "keys.yaml"
    target.write_text(f"keys:\n  - id: k2\n    secret_env: {OTHER_ENV}\n")
    link = tmp_path / "keys.yaml"
    link.symlink_to(target)
    authn = AuthnService.from_settings(make_settings(signing={"keys": [], "keys_file": str(link)}))
    monkeypatch.setattr(rotation, "WATCH_RECHECK_MS", 100)
    calls: list[int] = []
    real_load = rotation.load_keyring_from

    def unreadable_at_first(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConfigError(f"{link}: cannot read: Permission denied")
        return real_load(*args)

    monkeypatch.setattr(rotation, "load_keyring_from", unreadable_at_first)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(100):  # bounded wait for the backstop, not a timing assertion
            if condition():
                return
            await asyncio.sleep(0.05)

    async def scenario() -> list[str]:
        async with authn.running():
            replacement = real_dir / ".keys.yaml.tmp"
            replacement.write_text(f"keys:\n  - id: k4\n    secret_env: {OTHER_ENV}\n")
            replacement.chmod(0o000)
            replacement.replace(target)
            await until(lambda: bool(calls))
            target.chmod(0o644)
            await until(lambda: authn.verifier.keyring.key_ids == ["k4"])
        return authn.verifier.keyring.key_ids

    assert asyncio.run(scenario()) == ["k4"]
    assert len(calls) == 2
    assert authn.keys.last_error is None
