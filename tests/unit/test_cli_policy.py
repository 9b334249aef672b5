"""``gateway policy test|explain|lint`` read a directory as one version, as a reload does."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.authz.policy import PolicyEngine
from app.authz.store import PolicyStore
from app.cli import policy_explain
from app.cli.main import main
from app.core.config import PolicySettings
from tests.conftest import POLICY_DIR
from tests.unit.test_policy_store import ZOE_SUITE

ZOE_GRANT = "g, zoe, analyst, acme-2026\n"
# What the rollback's zoe.yaml holds: a case both versions pass.
ZOE_ROLLED_BACK = ZOE_SUITE.replace("acme-2026", "initech-redteam")
ZOE_READS = ("explain", "--subject", "zoe", "GET", "/v1/engagements/acme-2026/findings")


class Versions:
    """``policies`` as a symlink to one version directory, swapped atomically (``rename``),
    as the kubelet swaps a ConfigMap or a deploy tool a release directory."""

    def __init__(self, root: Path) -> None:
        self.root, self.link, self.count = root, root / "policies", 0

    def publish(self, grant: str = "", suites: dict[str, str] | None = None) -> Path:
        self.count += 1
        version = self.root / f"v{self.count}"
        shutil.copytree(POLICY_DIR, version)
        with (version / "policy.csv").open("a") as policy:
            policy.write(grant)
        for name, text in (suites or {}).items():
            (version / "tests" / name).write_text(text)
        staging = self.root / "staging"
        staging.symlink_to(version.name)
        staging.rename(self.link)
        return version


def on_open(
    monkeypatch: pytest.MonkeyPatch, name: str, nth: int | None, action: Callable[[], object]
) -> list[str]:
    """Run ``action`` right after the ``nth`` open of the file ``name`` (every open with
    ``None``): a change landing between reads. Returns the paths it fired for."""
    fired: list[str] = []
    opens = [0]
    real_open = os.open

    def opened(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if Path(str(path)).name == name:
            opens[0] += 1
            if nth is None or opens[0] == nth:
                fired.append(str(path))
                action()
        return fd

    monkeypatch.setattr(os, "open", opened)
    return fired


def gateway_policy(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = main(["policy", *map(str, args)])
    return code, capsys.readouterr().out


def printed(out: str) -> tuple[str, dict[str, str]]:
    """The revision ``policy test`` printed, and the sha256 it printed for each file."""
    found = re.search(r"\(revision ([0-9a-f]+)\)", out)
    assert found is not None, out
    files = dict(re.findall(r"^  (\S+): sha256 ([0-9a-f]{64})$", out, re.MULTILINE))
    return found.group(1), files


def revision_of(directory: Path) -> str:
    return PolicyEngine.load(PolicySettings(dir=directory)).revision


@pytest.mark.parametrize(
    ("name", "nth"),
    [("policy.csv", 1), ("closing.yaml", 1), ("closing.yaml", 2)],
    ids=["while the policy is read", "while the suites are read", "after the policy is read"],
)
def test_policy_test_tests_one_version_when_a_swap_lands_during_the_read(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    nth: int,
) -> None:
    """A bad change (a grant, with the case that refuses it) is rolled back while
    ``policy test`` reads it. The command read the policy, then the suites again: the
    bad policy, tested against the rolled-back suites, "passed" under the bad revision."""
    versions = Versions(tmp_path)
    bad = versions.publish(ZOE_GRANT, {"zoe.yaml": ZOE_SUITE})
    rolled_back: list[Path] = []

    def roll_back() -> None:
        rolled_back.append(versions.publish(suites={"zoe.yaml": ZOE_ROLLED_BACK}))

    on_open(monkeypatch, name, nth, roll_back)
    code, out = gateway_policy(capsys, "test", versions.link)
    monkeypatch.undo()
    revision, files = printed(out)
    if revision == revision_of(bad):
        assert (code, "44 passed, 1 failed" in out) == (1, True), out
        assert files == hashes_of(bad, versions.link)
    else:
        assert (code, "45 passed, 0 failed" in out) == (0, True), out
        assert files == hashes_of(rolled_back[0], versions.link)


def hashes_of(version: Path, shown_as: Path) -> dict[str, str]:
    """The sha256 of each file of ``version``, named as read through ``shown_as``."""
    paths = [version / "model.conf", version / "policy.csv", *sorted(version.glob("tests/*.yaml"))]
    return {
        str(shown_as / path.relative_to(version)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in paths
    }


def test_policy_test_names_the_revision_and_files_a_reload_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an admin tested is matched with what the gateway loaded by the same values:
    the revision (``GET /admin/policy``, ``policy_reloaded``) and each file's sha256."""
    directory = Versions(tmp_path).publish().parent / "policies"
    code, out = gateway_policy(capsys, "test", directory)
    status = PolicyStore.open(PolicySettings(dir=directory)).status
    assert code == 0, out
    assert printed(out) == (status.revision, {f.path: f.sha256 for f in status.files})
    lines = out.splitlines()
    at = lines.index("files tested, as read together (GET /admin/policy lists the loaded ones so):")
    assert lines[at - 1] == f"{directory}: 44 passed, 0 failed (revision {status.revision})"
    assert lines[at + 1] == f"  {directory}/model.conf: sha256 {status.files[0].sha256}"


def test_explain_casbin_asks_pycasbin_about_the_files_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--casbin`` opened the files again by their paths: a swap landing after the
    explanation's read had pycasbin answer for another version, a false disagreement."""
    versions = Versions(tmp_path)
    versions.publish(ZOE_GRANT)
    real_read = policy_explain.read_directory

    def read_then_roll_back(directory: Path) -> Any:
        read = real_read(directory)
        versions.publish()
        return read

    monkeypatch.setattr(policy_explain, "read_directory", read_then_roll_back)
    code, out = gateway_policy(capsys, *ZOE_READS, "--dir", versions.link, "--casbin")
    assert code == 0, out
    assert "decision: allow" in out.splitlines()
    casbin = next(line for line in out.splitlines() if line.startswith("casbin: "))
    assert casbin.startswith("casbin: allow, rule: analyst, *, /v1/engagements/:engagement/")


def test_files_that_keep_changing_are_exit_2_and_nothing_tested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    versions = Versions(tmp_path)
    versions.publish()
    on_open(monkeypatch, "policy.csv", None, versions.publish)  # a swap during every read
    code = main(["policy", "test", str(versions.link)])
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert "changed while being read (3 times): nothing was used; run the command again" in (
        captured.err
    )


def test_policy_test_on_a_policy_that_cannot_load_is_unusable_input_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """policies.md: for ``test``, a policy with lint errors is exit 2 (nothing was
    tested), not 1 (cases failed), and the error names its ``file:line``."""
    shutil.copytree(POLICY_DIR, tmp_path / "policies")
    csv = tmp_path / "policies" / "policy.csv"
    line = len(csv.read_text().splitlines()) + 1
    with csv.open("a") as out:
        out.write("p, analyst, *, /v1/engagements/:engagement/findings, GET, alow\n")
    code = main(["policy", "test", str(tmp_path / "policies")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"policy.csv:{line}: error: effect 'alow' must be allow or deny [syntax]" in err


GATEWAY_WIDE_CLOSED = "no close applies to the gateway-wide routes (domain *, /admin/...)"


@pytest.mark.parametrize(
    "args",
    [
        ("explain", "--subject", "sam", "--closed", "POST", "/admin/policy/reload"),
        ("who-can", "--closed", "POST", "/admin/policy/reload"),
        ("what-can", "sam", "--closed", "--engagement", "*"),
    ],
)
def test_closed_on_a_gateway_wide_path_is_an_error_not_a_deny(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """No close reaches domain ``*``: the gateway decides ``/admin`` as open whatever
    is closed. ``--closed`` there answered for a request never decided so: sam's
    reload denied, and "who may reload" answered by nobody."""
    code = main(["policy", *args, "--dir", str(POLICY_DIR)])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert GATEWAY_WIDE_CLOSED in captured.err
    assert "drop --closed" in captured.err


def test_what_can_closed_over_every_engagement_leaves_the_gateway_wide_row_open(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = gateway_policy(capsys, "what-can", "sam", "--closed", "--dir", POLICY_DIR)
    assert code == 0, out
    lines = out.splitlines()
    at = lines.index("in * (gateway-wide: /admin):")
    assert lines[at + 1] == "  allow * /admin/*: policy.csv:47 via sam > security_admin"
    other = next(line for line in lines if line.startswith("in (any other engagement)"))
    assert other == "in (any other engagement); closed by case --closed:"
