"""A ``--workers`` worker's settings: the supervisor's validated snapshot, never the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cli.serve import settings_snapshot
from app.core.config import CONFIG_FILE_ENV, SETTINGS_SNAPSHOT_ENV, Settings, load_snapshot
from app.main import create_app_from_env


def test_a_snapshot_round_trips_and_hides_the_configuration_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("edge: {header_timeout_seconds: 7}\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    settings = Settings(edge={"header_timeout_seconds": 7})
    with settings_snapshot(settings) as path:
        assert os.environ[SETTINGS_SNAPSHOT_ENV] == str(path)
        assert CONFIG_FILE_ENV not in os.environ  # the workers get no file to read
        config.write_text("bogus_key: 1\n")  # edited after start-up: not read
        monkeypatch.setenv("GATEWAY_EDGE__HEADER_TIMEOUT_SECONDS", "3")  # nor a later env
        assert load_snapshot(str(path)) == settings
        assert path.stat().st_mode & 0o777 == 0o600
    assert not path.exists()
    assert os.environ[CONFIG_FILE_ENV] == str(config)
    assert SETTINGS_SNAPSHOT_ENV not in os.environ


def test_a_worker_whose_settings_cannot_load_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SETTINGS_SNAPSHOT_ENV, str(tmp_path / "gone.json"))
    with pytest.raises(SystemExit) as exited:
        create_app_from_env()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gateway: configuration error: settings snapshot ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
