"""The README keeps up with the API index (a newcomer's first map) and the settings."""

from __future__ import annotations

import re

from app.core.config import Settings
from tests.conftest import REPO

INDEX = REPO / "app" / "api" / "docs" / "index.md"
README = REPO / "README.md"


def _route_pages() -> set[str]:
    """The pages the index's route table links to, one per route (or group of routes)."""
    rows = [line for line in INDEX.read_text().splitlines() if line.startswith("| ")]
    return {page for row in rows for page in re.findall(r"\(([a-z0-9-]+\.md)\)", row)}


def test_the_readme_shows_every_route_of_the_index() -> None:
    readme = README.read_text()
    section = readme.split("### Example routes", 1)[1].split("\n## ", 1)[0]
    shown = set(re.findall(r"\(app/api/docs/([a-z0-9-]+\.md)\)", section))
    pages = _route_pages()
    assert len(pages) >= 10, "the index's route table was not found"
    missing = sorted(pages - shown)
    assert not missing, f"add an example for these routes to README.md 'Example routes': {missing}"


def test_the_readme_configuration_table_names_every_settings_section() -> None:
    """The authorizer section (the decision endpoints' routes) was missing from it."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([a-z_]+)(?:\.<name>)?` \|", section, re.M))
    assert set(Settings.model_fields) - named == set()
