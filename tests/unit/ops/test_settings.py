"""The ops and redis settings sections: environment names and validation."""

from __future__ import annotations

import pytest

from app.core.config import load_settings
from app.core.errors import ConfigError


def test_rate_limits_and_redis_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_REDIS__URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("GATEWAY_OPS__RATE_LIMIT__SUBJECT__LIMIT", "50")
    monkeypatch.setenv("GATEWAY_OPS__RATE_LIMIT__SUBJECT__WINDOW_SECONDS", "10")
    monkeypatch.setenv("GATEWAY_OPS__RATE_LIMIT__ON_REDIS_ERROR", "closed")
    settings = load_settings()
    assert settings.redis.url == "redis://127.0.0.1:6390/2"
    rule = settings.ops.rate_limit.subject
    assert rule is not None
    assert (rule.limit, rule.window_seconds, rule.emission_interval) == (50, 10.0, 0.2)
    assert settings.ops.rate_limit.engagement is None
    assert settings.ops.rate_limit.on_redis_error == "closed"


def test_defaults_keep_state_in_memory_and_limits_off() -> None:
    settings = load_settings()
    assert settings.redis.url is None
    assert settings.ops.rate_limit.subject is None
    # Nothing fails open when Redis cannot answer (DESIGN.md): a limit is kept, not waived.
    assert settings.ops.rate_limit.on_redis_error == "closed"
    assert settings.ops.metrics_enabled is True
    assert settings.ops.graceful_shutdown_seconds == 20


@pytest.mark.parametrize(
    ("env", "value", "where"),
    [
        ("GATEWAY_OPS__RATE_LIMIT__SUBJECT__LIMIT", "0", "ops.rate_limit.subject.limit"),
        ("GATEWAY_OPS__RATE_LIMIT__ON_REDIS_ERROR", "maybe", "ops.rate_limit.on_redis_error"),
        ("GATEWAY_OPS__GRACEFUL_SHUTDOWN_SECONDS", "0", "ops.graceful_shutdown_seconds"),
        ("GATEWAY_OPS__RELOAD_NOTICES__CHANNEL", "has space", "ops.reload_notices.channel"),
    ],
)
def test_bad_values_are_one_line_config_errors(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, where: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.detail.startswith(where)
    assert "\n" not in caught.value.detail


URL = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("overrides", "where", "message"),
    [
        (
            {
                "services": {"files": {"url": URL}},
                "orchestration": {
                    "passthrough": [
                        {
                            "path": "/v1/files/{file_id}",
                            "service": "files",
                            "upstream_path": "/files/{file_id}",
                            "max_request_bytes": 52428800,
                        }
                    ]
                },
            },
            "settings",
            "orchestration.passthrough[0].max_request_bytes (52428800) exceeds "
            "edge.max_body_bytes (1048576)",
        ),
        (
            {
                "services": {
                    "files": {
                        "url": URL,
                        "retry": {"backoff_initial_seconds": 5, "backoff_max_seconds": 1},
                    }
                }
            },
            "services.files.retry",
            "backoff_initial_seconds must not exceed backoff_max_seconds",
        ),
    ],
    ids=["route above the edge", "backoff backwards"],
)
def test_settings_that_could_never_apply_stop_start_up(
    overrides: dict[str, object], where: str, message: str
) -> None:
    """Found by an audit: each was accepted and silently had no effect (or another one)."""
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert caught.value.detail.startswith(where)
    assert message in caught.value.detail
    assert "\n" not in caught.value.detail
