"""The configuration reference page is generated and never drifts from the models."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import config_docs
from app.cli.main import main
from app.core.config import Settings
from app.ops.config_reference import PAGE, render_reference


def test_committed_page_matches_the_models() -> None:
    assert PAGE.read_text(encoding="utf-8") == render_reference(), (
        "run: gateway config-docs --output app/api/docs/configuration.md"
    )


def test_every_section_and_leaf_is_documented() -> None:
    page = render_reference()
    for section in Settings.model_fields:
        assert f"## `{section}" in page or f"`{section}`" in page
    for env in (
        "GATEWAY_REDIS__URL",
        "GATEWAY_OPS__RATE_LIMIT__SUBJECT__LIMIT",
        "GATEWAY_OPS__RATE_LIMIT__ON_REDIS_ERROR",
        "GATEWAY_OPS__GRACEFUL_SHUTDOWN_SECONDS",
        "GATEWAY_SERVICES__<NAME>__URL",
    ):
        assert f"`{env}`" in page
    assert '| "open" \\| "closed" | `"closed"` |' in page


def test_check_passes_on_the_committed_page() -> None:
    assert main(["config-docs", "--check"]) == 0


def test_check_fails_on_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(render_reference().replace("GATEWAY_REDIS__URL", "GATEWAY_OLD"))
    monkeypatch.setattr(config_docs, "PAGE", stale)
    assert main(["config-docs", "--check"]) == 1
    assert "out of date" in capsys.readouterr().out


def test_output_writes_the_page(tmp_path: Path) -> None:
    target = tmp_path / "out.md"
    assert main(["config-docs", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_reference()


@pytest.mark.parametrize("where", ["missing/out.md", "."])
def test_output_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a traceback and exit 1."""
    assert main(["config-docs", "--output", str(tmp_path / where)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("gateway: config-docs --output ")
    assert list(tmp_path.iterdir()) == []  # nothing half written, no temporary left
