"""The shadow candidate's own errors name the setting that points at it."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from app.authz.shadow import open_shadow
from app.core.config import PolicySettings
from tests.conftest import POLICY_DIR


def test_a_missing_candidate_names_policy_shadow_dir(tmp_path: Path) -> None:
    """It said "policy.dir: .../model.conf is not a readable file", the live setting."""
    missing = tmp_path / "candidate"
    settings = PolicySettings(dir=POLICY_DIR, shadow_dir=missing, watch_interval=0)
    with capture_logs() as logs:
        shadow = open_shadow(settings)
    assert shadow is not None
    assert shadow.engine is None
    assert (
        shadow.last_error == f"policy.shadow_dir: {missing / 'model.conf'} is not a readable file"
    )
    [line] = [e for e in logs if e["event"] == "policy_shadow_rejected"]
    assert line["error"] == shadow.last_error
