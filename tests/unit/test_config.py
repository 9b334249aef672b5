"""Settings: validated at start, one readable line per problem, never a secret echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.authn.keys import load_keyring
from app.core.config import AuthorizerSettings, PassthroughRoute, load_settings
from app.core.errors import ConfigError
from app.main import create_app
from tests.conftest import TEST_KEY_ENV, make_settings


@pytest.mark.parametrize("with_file", [False, True])
def test_an_environment_value_that_is_not_json_names_its_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, with_file: bool
) -> None:
    """It said "None: error parsing value ..." without a file, and blamed the file with one."""
    monkeypatch.setenv("GATEWAY_SIGNING__KEYS", "[{bad")
    if with_file:
        config = tmp_path / "gateway.yaml"
        config.write_text("log: {level: INFO}\n")
        monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.detail == (
        "signing: the value of GATEWAY_SIGNING or of a GATEWAY_SIGNING__* variable "
        "is not valid JSON for it"
    )


def test_environment_builds_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SERVICES__FINDINGS__URL", "http://127.0.0.1:9102")
    monkeypatch.setenv("GATEWAY_SERVICES__FINDINGS__READ_TIMEOUT", "2.5")
    settings = load_settings()
    assert str(settings.services["findings"].url) == "http://127.0.0.1:9102/"
    assert settings.services["findings"].read_timeout == 2.5


def test_malformed_url_names_where(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SERVICES__FINDINGS__URL", "not a url")
    with pytest.raises(ConfigError, match=r"^services\.findings\.url: "):
        load_settings()


def test_yaml_file_and_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("edge:\n  max_body_bytes: 10\n")
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(config))
    assert load_settings().edge.max_body_bytes == 10
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(tmp_path))  # a directory: said so
    with pytest.raises(ConfigError, match=r"\(--config or GATEWAY_CONFIG_FILE\): not a file$"):
        load_settings()


def test_unknown_setting_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("edge:\n  max_body_bites: 10\n")
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError, match=r"edge\.max_body_bites"):
        load_settings()


def test_missing_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"id=test-2026\): environment variable {TEST_KEY_ENV}"):
        create_app(make_settings())


def test_short_secret_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_KEY_ENV, "short-secret")
    with pytest.raises(ConfigError) as caught:
        load_keyring(make_settings().signing.keys)
    assert "short-secret" not in str(caught.value)


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_bytes(b"file-secret-0123456789abcdef0123456789\n")
    settings = make_settings(signing={"keys": [{"id": "f1", "secret_file": str(secret)}]})
    key = load_keyring(settings.signing.keys).get("f1")
    assert key is not None
    assert key.secret.endswith(b"789")
    assert "file-secret" not in repr(key)


def test_unreadable_policy_is_refused(test_key_env: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.conf is not a readable file"):
        create_app(make_settings(policy={"dir": str(tmp_path)}))


def test_key_needs_exactly_one_secret_source() -> None:
    with pytest.raises(ValueError, match="exactly one of secret_env or secret_file"):
        make_settings(signing={"keys": [{"id": "k"}]})


@pytest.mark.parametrize(
    "path",
    [
        "/v1/projects/{engagement_id}/files",
        "/v1/engagements/{eid}/files",
        "/v1/engagements/{engagement_id}x/files",
        "/v1/engagements/acme-2026/files",  # decided in *, explained in acme-2026
    ],
)
def test_a_passthrough_engagement_sits_where_the_policy_reads_it(path: str) -> None:
    route = {"path": path, "service": "findings", "upstream_path": "/x"}
    with pytest.raises(ValidationError, match="the engagement placeholder is"):
        PassthroughRoute.model_validate(route)


AUTHORIZER_MISPLACED = [
    "/api/{engagement_id}/docs",  # decided in the engagement, explained in *
    "/v1/engagements/{eid}/notes",  # decided in *, explained in the engagement
    "/v1/engagements/acme-2026/notes",
    "/v1/engagements/{rest:path}",
    "/v1/engagements/{engagement_id:str}/notes",
]


@pytest.mark.parametrize("template", AUTHORIZER_MISPLACED)
def test_an_authorizer_template_puts_the_engagement_where_the_policy_tools_read_it(
    template: str,
) -> None:
    routes = ["/v1/engagements/{engagement_id}/findings", template]
    with pytest.raises(ValidationError, match=r"authorizer\.routes[\s\S]*engagement placeholder"):
        make_settings(authorizer={"routes": routes})


def test_authorizer_templates_where_the_policy_tools_read_the_engagement_are_accepted() -> None:
    routes = [
        "/v1/engagements/{engagement_id}",
        "/v1/engagements/{engagement_id}/findings/{finding_id}",
        "/v1/engagements/{engagement_id}/{rest:path}",
        "/v1/engagements",
        "/admin/{rest:path}",
    ]
    assert make_settings(authorizer={"routes": routes}).authorizer.routes == routes


UNROUTABLE = [
    "/v1/engagements/{engagement_id}/files/",
    "/v1/engagements/{engagement_id}//files",
    "/v1/engagements/{engagement_id}/./files",
    "/v1/engagements/{engagement_id}/../files",
    "/v1/files/.",
]


@pytest.mark.parametrize("path", UNROUTABLE)
def test_a_passthrough_path_the_edge_never_routes_is_refused(path: str) -> None:
    """The edge removes a trailing slash, ``//``, ``.`` and ``..`` from every request
    path: such a route was accepted at start-up and then matched nothing (404s)."""
    route = {"path": path, "service": "findings", "upstream_path": "/x"}
    with pytest.raises(ValidationError, match="no request can match it"):
        PassthroughRoute.model_validate(route)


@pytest.mark.parametrize("template", UNROUTABLE)
def test_an_authorizer_template_the_edge_never_routes_is_refused(template: str) -> None:
    with pytest.raises(ValidationError, match="no request can match it"):
        AuthorizerSettings.model_validate({"routes": [template]})


@pytest.mark.parametrize(
    "path", ["/v1/engagements/{engagement_id}/files", "/v1/files.d/x..y/.well-known/a.b"]
)
def test_dots_inside_a_segment_are_routable(path: str) -> None:
    route = {"path": path, "service": "findings", "upstream_path": "/x/"}
    assert PassthroughRoute.model_validate(route).path == path
