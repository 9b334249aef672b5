"""``PolicyStore``: the gate (parse, lint errors, suites) and the swap that keeps the last good."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.authz.policy import PolicyEngine
from app.authz.store import PolicyStore
from app.authz.suite import load_suites, read_suites, run_suites
from app.authz.sync import follow_notices
from app.authz.watch import fingerprint, policy_watcher
from app.core.config import PolicySettings
from app.core.errors import ConfigError
from tests.conftest import POLICY_DIR

ALICE_READS = ("alice", "acme-2026", "/v1/engagements/acme-2026/findings", "GET")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, target)
    return target


def open_store(policy_dir: Path, **extra: Any) -> PolicyStore:
    return PolicyStore.open(PolicySettings(dir=policy_dir, **extra))


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_reload_swaps_a_valid_change(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    before = store.revision
    append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")
    result = asyncio.run(store.reload("test"))
    assert (result.outcome, result.previous_revision) == ("swapped", before)
    assert store.revision == result.revision != before
    assert store.current.explain("zoe", *ALICE_READS[1:]).allowed
    assert result.tests_run == store.status.tests > 0


def test_a_notice_runs_the_gate_only_when_the_files_are_not_those_in_force(
    policy_dir: Path,
) -> None:
    """dist32: a revision announced on Redis that this process's files never give (a key
    kept from an older deployment) ran the whole gate, build and suites, once a minute
    for ever. The same files as the policy in force cannot give it: nothing is run."""
    store = open_store(policy_dir)
    follow = follow_notices(store)
    asyncio.run(follow("rev-from-elsewhere"))
    assert store.status.last_reload is None  # no build, no suite, no log line
    append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")  # the files catch up
    asyncio.run(follow("rev-from-elsewhere"))
    last = store.status.last_reload
    assert last is not None
    assert (last.outcome, last.reason) == ("swapped", "notice:rev-from-elsewhere")


def test_reload_of_unchanged_files_keeps_the_revision(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    result = asyncio.run(store.reload("test"))
    assert result.outcome == "unchanged"
    assert result.revision == store.revision


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("p, analyst, *, /v1/*, GET\n", "policy.csv:"),
        ("g, bob, client_viewer, acme-2026\n", "policy test(s) failed"),
    ],
    ids=["syntax error", "failing suite"],
)
def test_broken_policy_keeps_the_last_good_one(
    policy_dir: Path, captured_logs: list[dict[str, Any]], breakage: str, message: str
) -> None:
    store = open_store(policy_dir)
    good = store.current
    append(policy_dir / "policy.csv", breakage)
    result = asyncio.run(store.reload("test"))
    assert result.outcome == "rejected"
    assert result.error is not None
    assert message in result.error
    assert store.current is good
    assert store.status.last_error is not None
    assert store.status.last_error.message == result.error
    rejected = [e for e in captured_logs if e["event"] == "policy_reload_rejected"]
    assert rejected
    assert rejected[0]["policy_revision"] == good.revision


def test_broken_suite_file_is_rejected(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    (policy_dir / "tests" / "bad.yaml").write_text("suite: x\ncases: [{name: y}]\n")
    result = asyncio.run(store.reload("test"))
    assert result.outcome == "rejected"
    assert result.error is not None
    assert "tests/bad.yaml" in result.error


def test_missing_policy_file_is_rejected(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    (policy_dir / "policy.csv").unlink()
    assert asyncio.run(store.reload("test")).outcome == "rejected"


def test_a_good_reload_clears_the_last_error(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    original = (policy_dir / "policy.csv").read_text()
    append(policy_dir / "policy.csv", "nonsense\n")
    asyncio.run(store.reload("test"))
    (policy_dir / "policy.csv").write_text(original)
    assert asyncio.run(store.reload("test")).outcome == "unchanged"
    assert store.status.last_error is None


def test_start_up_refuses_a_policy_whose_tests_fail(policy_dir: Path) -> None:
    append(policy_dir / "policy.csv", "g, bob, client_viewer, acme-2026\n")
    with pytest.raises(ConfigError, match="policy test"):
        open_store(policy_dir)


def test_watcher_reloads_after_a_change_settles(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    before = store.revision

    async def scenario() -> str:
        async with policy_watcher(store, 0.02):
            append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")
            for _ in range(200):
                await asyncio.sleep(0.02)
                if store.revision != before:
                    break
        return store.revision

    assert asyncio.run(scenario()) != before
    assert store.status.last_reload is not None
    assert store.status.last_reload.reason == "file_change"


def test_fingerprint_sees_new_suite_files(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    before = fingerprint(store)
    shutil.copy(policy_dir / "tests" / "findings.yaml", policy_dir / "tests" / "copy.yaml")
    assert fingerprint(store) != before


def test_a_held_old_engine_keeps_deciding_after_a_swap(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    old = store.current
    append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")
    assert asyncio.run(store.reload("test")).outcome == "swapped"
    assert old.explain(*ALICE_READS).allowed
    assert not old.explain("zoe", *ALICE_READS[1:]).allowed


def test_an_unheld_old_engine_is_released(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    old = weakref.ref(store.current.compiled)
    append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")
    assert asyncio.run(store.reload("test")).outcome == "swapped"
    assert old() is None


def test_concurrent_reloads_are_serialised(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")

    async def both() -> list[str]:
        results = await asyncio.gather(store.reload("one"), store.reload("two"))
        return [r.outcome for r in results]

    assert asyncio.run(both()) == ["swapped", "unchanged"]


def test_a_rejected_reload_records_every_failure_and_the_cases_run(policy_dir: Path) -> None:
    """The record once said '4 failed' but listed 3, and tests_run: 0 after 42 ran."""
    store = open_store(policy_dir)
    append(policy_dir / "policy.csv", "p, analyst, *, /v1/*, *, deny\n")
    cases = load_suites(policy_dir)
    expected = run_suites(PolicyEngine.load(PolicySettings(dir=policy_dir)), cases).failures
    assert len(expected) > 3
    result = asyncio.run(store.reload("test"))
    assert result.outcome == "rejected"
    assert result.tests_run == len(cases) > 0
    assert result.tests_failed == len(result.failures) == len(expected)
    assert result.error is not None
    assert result.error.startswith(f"{len(expected)} of {len(cases)} policy test(s) failed")
    for failure in expected:
        assert failure.case.location in result.error
        assert any(failure.case.name in listed for listed in result.failures)
    assert store.status.last_reload == result


def test_a_rejected_parse_records_no_cases_run(policy_dir: Path) -> None:
    store = open_store(policy_dir)
    append(policy_dir / "policy.csv", "p, analyst\n")
    result = asyncio.run(store.reload("test"))
    assert (result.outcome, result.tests_run, result.tests_failed) == ("rejected", 0, 0)


@pytest.mark.parametrize(
    ("odd", "expected"),
    [
        ("suite: odd\n? [a, b]\n: 1\n", "tests/odd.yaml:2"),  # a list key, on its line
        ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("suite: s # \u2028cases: []\n", "U+2028"),  # a line break only for some readers
    ],
    ids=["list key", "deep nesting", "hidden line break"],
)
def test_a_suite_file_nobody_foresaw_is_rejected_not_a_crash(
    policy_dir: Path, odd: str, expected: str
) -> None:
    """Found by an audit: a list key crashed the reload (HTTP 500, the watcher stopped)."""
    store = open_store(policy_dir)
    good = store.current
    (policy_dir / "tests" / "odd.yaml").write_text(odd, encoding="utf-8")
    result = asyncio.run(store.reload("test"))
    assert result.outcome == "rejected"
    assert result.error is not None
    assert expected in result.error
    assert store.current is good
    with pytest.raises(ConfigError, match=r"tests/odd\.yaml"):
        open_store(policy_dir)  # and start-up says so in one line


def test_a_directory_without_test_cases_is_rejected(policy_dir: Path) -> None:
    """The suites are the gate: with none, any edit would pass it."""
    store = open_store(policy_dir)
    shutil.rmtree(policy_dir / "tests")
    append(policy_dir / "policy.csv", "p, alice, *, /admin/*, *, allow\n")
    result = asyncio.run(store.reload("test"))
    assert result.outcome == "rejected"
    assert result.error is not None
    assert "no test cases" in result.error
    assert not store.current.explain("alice", "*", "/admin/breakers", "GET").allowed
    with pytest.raises(ConfigError, match="no test cases"):
        open_store(policy_dir)


def test_an_unforeseen_error_while_reading_is_a_rejection(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails while reading, the reload is refused and the last good policy kept."""
    store = open_store(policy_dir)

    def broken(files: object) -> None:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr("app.authz.store.parse_suites", broken)
    result = asyncio.run(store.reload("test"))
    assert (result.outcome, result.error) == (
        "rejected",
        f"policy: cannot read {policy_dir}: TypeError",
    )


def test_the_watcher_reloads_a_file_made_readable_by_chmod(policy_dir: Path) -> None:
    """A save the gateway cannot read (mode 000 by another user) is refused; the admin's
    ``chmod`` then changes only the mode, and the watcher must still reload it (it kept
    the old revision, "Permission denied", until some other edit). Tests run as root,
    which reads any mode, so the refused read is played by the first reload."""
    store = open_store(policy_dir)
    before = store.revision
    real = store.reload
    calls: list[str] = []

    async def unreadable_at_first(reason: str) -> Any:
        calls.append(reason)
        return None if len(calls) == 1 else await real(reason)

    store.reload = unreadable_at_first  # type: ignore[method-assign]
    policy = policy_dir / "policy.csv"

    async def scenario() -> None:
        async with policy_watcher(store, 0.02):
            append(policy, "g, zoe, analyst, acme-2026\n")
            policy.chmod(0o000)
            for _ in range(200):
                await asyncio.sleep(0.02)
                if calls:
                    break
            policy.chmod(0o644)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if store.revision != before:
                    break

    asyncio.run(scenario())
    assert len(calls) == 2
    assert store.revision != before


def test_editor_files_beside_a_suite_are_not_suites(policy_dir: Path) -> None:
    """An Emacs lock (a dangling symlink) and a macOS ``._`` file in ``tests/`` refused
    every reload while they were there, here the revocation saved meanwhile."""
    append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")
    store = open_store(policy_dir)
    tests = policy_dir / "tests"
    (tests / ".#findings.yaml").symlink_to("root@host.4242:1700000000")
    (tests / "._findings.yaml").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (policy_dir / "policy.csv").write_text((POLICY_DIR / "policy.csv").read_text())
    result = asyncio.run(store.reload("file_change"))
    assert result.outcome == "swapped", result.error
    assert not store.decide("zoe", *ALICE_READS[1:]).allowed
    assert ".#findings.yaml" not in str(fingerprint(store))


def test_the_watcher_outlives_a_reload_that_raised(policy_dir: Path) -> None:
    """A failing reload is logged; the next change is still seen and loaded."""
    store = open_store(policy_dir)
    before = store.revision
    real = store.reload
    calls: list[str] = []

    async def flaky(reason: str) -> Any:
        calls.append(reason)
        if len(calls) == 1:
            raise RuntimeError("a listener's bug")
        return await real(reason)

    store.reload = flaky  # type: ignore[method-assign]

    async def scenario() -> None:
        async with policy_watcher(store, 0.02):
            append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")
            for _ in range(200):
                await asyncio.sleep(0.02)
                if calls:
                    break
            append(policy_dir / "policy.csv", "g, zed, analyst, acme-2026\n")
            for _ in range(200):
                await asyncio.sleep(0.02)
                if store.revision != before:
                    break

    asyncio.run(scenario())
    assert len(calls) >= 2
    assert store.revision != before


def test_status_hashes_the_bytes_the_policy_in_force_was_built_from(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an audit: the file hashes came from a second read, so a file replaced
    while a reload ran showed a hash the revision in force was not built from."""
    policy_file = policy_dir / "policy.csv"
    parsed = policy_file.read_bytes() + b"g, zoe, analyst, acme-2026\n"
    policy_file.write_bytes(parsed)
    replaced = parsed + b"g, zed, analyst, acme-2026\n"
    once_opened(monkeypatch, "policy.csv", lambda: policy_file.write_bytes(replaced))
    store = open_store(policy_dir)
    monkeypatch.undo()
    shown = {Path(f.path).name: f.sha256 for f in store.status.files}
    assert shown["policy.csv"] == hashlib.sha256(replaced).hexdigest()
    assert store.current.explain("zed", *ALICE_READS[1:]).allowed


def test_status_hashes_the_suite_bytes_that_were_tested(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an audit: a suite's hash in ``GET /admin/policy`` came from a second read
    after the cases were run, so a suite saved meanwhile showed a hash of cases that
    were never run."""
    store = open_store(policy_dir)
    suite = policy_dir / "tests" / "findings.yaml"
    extra = "\n".join(ZOE_SUITE.splitlines()[2:]) + "\n"  # one more case, for zoe
    saved = suite.read_text() + extra
    once_opened(monkeypatch, "findings.yaml", lambda: suite.write_text(saved))
    result = asyncio.run(store.reload("file_change"))
    monkeypatch.undo()
    shown = {Path(f.path).name: f.sha256 for f in store.status.files}
    assert shown["findings.yaml"] == hashlib.sha256(saved.encode()).hexdigest()
    assert result.tests_run == store.status.tests == len(load_suites(policy_dir))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "3 of 44 policy test(s) failed:\ncase a\ncase b",
            "3 of 44 policy test(s) failed (every failure: GET /admin/policy)",
        ),
        ("policy.csv:3: bad line", "policy.csv:3: bad line"),
        ("", ""),
    ],
)
def test_readiness_names_a_rejected_reload_without_a_dangling_list(
    message: str, expected: str
) -> None:
    from types import SimpleNamespace

    from app.api.routes.health import policy_check
    from app.authz.store import ReloadError

    status = SimpleNamespace(revision="r1", last_error=ReloadError(0.0, "tests_failed", message))
    check = policy_check(SimpleNamespace(status=status))  # type: ignore[arg-type]
    assert check.ok
    assert check.detail == f"revision r1; last reload rejected, last good policy kept: {expected}"


ZOE_SUITE = """suite: zoe left
cases:
  - name: zoe reads no findings
    subject: zoe
    method: GET
    path: /v1/engagements/acme-2026/findings
    expect: deny
"""


def once_opened(
    monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], object]
) -> list[object]:
    """Run ``action`` once, right after the file ``name`` is opened for reading: a change
    landing between a reload's reads of its files. Returns the paths it fired for."""
    fired: list[object] = []
    real_open, real_read_bytes = os.open, Path.read_bytes

    def fire(path: object) -> None:
        if Path(str(path)).name == name and not fired:
            fired.append(path)
            action()

    def opened(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        fire(path)
        return fd

    def read_bytes(path: Path) -> bytes:
        data = real_read_bytes(path)
        fire(path)
        return data

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return fired


class SwappedDirectory:
    """``policies`` as a symlink to one version directory, swapped atomically (``rename``)."""

    def __init__(self, root: Path) -> None:
        self.root, self.link, self.versions = root, root / "policies", 0

    def publish(self, extra_policy: str = "", extra_suites: dict[str, str] | None = None) -> None:
        self.versions += 1
        version = self.root / f"v{self.versions}"
        shutil.copytree(POLICY_DIR, version)
        append(version / "policy.csv", extra_policy)
        for name, text in (extra_suites or {}).items():
            (version / "tests" / name).write_text(text)
        staging = self.root / "staging"
        staging.symlink_to(version.name)
        staging.rename(self.link)


def test_a_reload_reads_model_policy_and_suites_of_one_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an audit: a swap landing between the policy's read and the suites' tested
    one version's policy against another's suites. Here a bad change (a grant, with the
    suite that refuses it) is rolled back while the reload reads it: the bad policy,
    tested against the rolled-back suites, went into force."""
    volume = SwappedDirectory(tmp_path)
    volume.publish()
    store = open_store(volume.link)
    good = store.revision
    volume.publish("g, zoe, analyst, acme-2026\n", {"zoe.yaml": ZOE_SUITE})
    rolled_back = once_opened(monkeypatch, "policy.csv", volume.publish)  # before the suites
    result = asyncio.run(store.reload("file_change"))
    monkeypatch.undo()
    assert rolled_back
    assert not store.current.explain("zoe", *ALICE_READS[1:]).allowed
    assert (result.outcome, store.revision) == ("unchanged", good), result.error
    on_disk = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in [volume.link / "policy.csv", *(volume.link / "tests").glob("*.yaml")]
    }
    shown = {Path(f.path).name: f.sha256 for f in store.status.files}
    assert {name: shown.get(name) for name in on_disk} == on_disk


def test_files_that_keep_changing_while_read_are_refused(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files still changing after every re-read are not used at all: the last good stays."""
    store = open_store(policy_dir)
    good = store.current
    policy_file = policy_dir / "policy.csv"
    real_open = os.open

    def a_writer_that_never_stops(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if Path(str(path)).name == "policy.csv":
            append(policy_file, "g, zoe, analyst, acme-2026\n")
        return fd

    monkeypatch.setattr(os, "open", a_writer_that_never_stops)
    result = asyncio.run(store.reload("file_change"))
    monkeypatch.undo()
    assert result.outcome == "rejected"
    assert result.error is not None
    assert "changed while being read" in result.error
    assert store.current is good


HUGE = "x" * 5_000_000  # one 5 MB value on one line
FULL_CASE = "suite: s\ncases:\n  - name: n\n    subject: a\n    method: GET\n    path: /x\n"
FULL_CASE += "    expect: deny\n"


@pytest.mark.parametrize(
    ("where", "text", "location"),
    [
        ("policy.csv", f"p, analyst, *, /v1/{HUGE}, GET, allow\n", "policy.csv:65"),
        ("policy.csv", f"p, analyst, *, /v1/x, GET, {HUGE}\n", "policy.csv:65"),
        ("policy.csv", f"{HUGE}, analyst, *\n", "policy.csv:65"),
        ("policy.csv", f"g, {HUGE}, analyst, *\n", "policy.csv:65"),
        ("tests/big.yaml", f"suite: s\n? {HUGE}\n: 1\n? {HUGE}\n: 2\n", "tests/big.yaml:4"),
        ("tests/big.yaml", f"{FULL_CASE}    ? {HUGE}\n    : 1\n", "tests/big.yaml:8"),
        ("tests/big.yaml", f"suite: !<!{HUGE}> s\n", "tests/big.yaml:1"),
    ],
    ids=["object", "effect", "line type", "name", "repeated key", "unknown key", "yaml tag"],
)
def test_an_error_quotes_a_huge_value_cut_short_with_its_location(
    policy_dir: Path, captured_logs: list[dict[str, Any]], where: str, text: str, location: str
) -> None:
    """Found by an audit: an error quoted the whole bad value, so a 5 MB line made a 5 MB
    message in the log, the readiness detail, the admin API and the CLI."""
    store = open_store(policy_dir)
    with (policy_dir / where).open("a") as file:
        file.write(text)
    result = asyncio.run(store.reload("file_change"))
    assert result.outcome == "rejected"
    assert result.error is not None
    assert location in result.error
    assert len(result.error) < 3000
    assert "... (5000" in result.error
    logged = [e for e in captured_logs if e["event"] == "policy_reload_rejected"]
    assert len(str(logged)) < 5000


def test_a_reload_lists_the_first_suite_problems_and_counts_the_rest(policy_dir: Path) -> None:
    """Every problem of 5,000 bad cases made one message of them all; lint lists them."""
    store = open_store(policy_dir)
    bad = "".join(
        f"  - {{name: c{n}, subject: alice, method: GET, path: /x}}\n" for n in range(5000)
    )
    (policy_dir / "tests" / "big.yaml").write_text("suite: s\ncases:\n" + bad)
    result = asyncio.run(store.reload("file_change"))
    assert result.error is not None
    assert len(result.error.splitlines()) == 21
    assert "tests/big.yaml:3" in result.error
    assert result.error.endswith("... and 4980 more (gateway policy lint lists every one)")
    assert len(read_suites(policy_dir)[1]) == 5000


def test_watcher_reloads_an_edit_saved_before_it_started(policy_dir: Path) -> None:
    """The policy is read in ``create_app``, the watch starts in the lifespan: it took
    its first fingerprint then, so a revocation saved in between was never reloaded
    (the files matched that fingerprint) until some other edit."""
    store = open_store(policy_dir)
    before = store.revision
    append(policy_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")

    async def scenario() -> None:
        async with policy_watcher(store, 0.02):
            for _ in range(100):
                await asyncio.sleep(0.02)
                if store.revision != before:
                    break

    asyncio.run(scenario())
    assert store.revision != before
    assert store.decide("zoe", *ALICE_READS[1:]).allowed


def test_shadow_watcher_reloads_an_edit_saved_before_it_started(
    policy_dir: Path, tmp_path: Path
) -> None:
    shadow_dir = tmp_path / "candidate"
    shutil.copytree(policy_dir, shadow_dir)
    store = open_store(policy_dir, shadow_dir=shadow_dir)
    shadow = store.shadow
    assert shadow is not None
    assert shadow.engine is not None
    before = shadow.engine.revision
    append(shadow_dir / "policy.csv", "g, zoe, analyst, acme-2026\n")

    async def scenario() -> None:
        async with policy_watcher(store, 0.02):
            for _ in range(100):
                await asyncio.sleep(0.02)
                if shadow.engine is not None and shadow.engine.revision != before:
                    break

    asyncio.run(scenario())
    assert shadow.engine.revision != before
