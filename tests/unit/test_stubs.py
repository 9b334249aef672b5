"""Stub data and fault flags, without a network."""

from __future__ import annotations

import asyncio

import pytest
import structlog
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

from app.cli import stub as stub_command
from app.cli.main import build_parser
from app.cli.stub import fault_config
from app.stubs import server as stub_server_module
from app.stubs.data import report_chunks, seed_findings, seed_reports
from app.stubs.faults import FaultConfig, FaultState
from app.stubs.findings import UPLOAD_MEMORY, RecentUploads
from app.stubs.recording import IDEMPOTENCY_MEMORY, RememberedAnswers
from app.stubs.server import STUB_NAMES, create_stub_app
from app.stubs.stopping import Stopping
from tests.conftest import REPO


def test_seeded_data_is_reproducible_and_seed_dependent() -> None:
    assert seed_reports(7) == seed_reports(7)
    assert seed_findings(7) == seed_findings(7)
    assert seed_reports(7) != seed_reports(8)
    reports = seed_reports(7)["acme-2026"]
    assert all(r["engagement_id"] == "acme-2026" for r in reports)
    assert reports[0]["id"] == "R-0001"


def test_report_chunks_add_up_to_the_size() -> None:
    chunks = report_chunks("R-0001", 200_000, chunk=65_536)
    assert sum(len(c) for c in chunks) == 200_000
    assert len(chunks) == 4
    assert report_chunks("R-0001", 0) == []


def test_cli_flags_become_a_fault_config() -> None:
    args = build_parser().parse_args(
        [
            "stub",
            "--name",
            "reports",
            "--port",
            "9103",
            "--seed",
            "3",
            "--fail-next",
            "2",
            "--retry-after",
            "1",
            "--error-rate",
            "0.25",
            "--latency-ms",
            "50",
            "--slow-body-ms",
            "5",
            "--reset",
        ]
    )
    config = fault_config(args)
    assert config == FaultConfig(
        fail_next=2,
        retry_after=1,
        error_rate=0.25,
        latency_ms=50,
        slow_body_ms=5,
        reset=True,
        seed=3,
    )


def test_fail_next_comes_before_the_seeded_dice() -> None:
    state = FaultState(FaultConfig(fail_next=2, fail_status=503, error_rate=0.5, seed=11))
    first = [state.failure_status() for _ in range(2)]
    dice = [state.failure_status() for _ in range(20)]
    state.configure(FaultConfig(error_rate=0.5, seed=11))
    again = [state.failure_status() for _ in range(20)]
    assert first == [503, 503]
    assert dice == again, "the same seed rolls the same dice"
    assert {500, None} == set(dice)


@pytest.mark.parametrize("bad", [{"error_rate": 1.5}, {"fail_status": 399}, {"nope": 1}])
def test_fault_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        FaultConfig.model_validate(bad)


def test_a_merge_that_names_no_seed_keeps_rolling_the_same_dice() -> None:
    patched = FaultState(FaultConfig(error_rate=0.5, seed=11))
    untouched = FaultState(FaultConfig(error_rate=0.5, seed=11))
    first = [patched.failure_status() for _ in range(5)]
    patched.merge(FaultConfig.model_validate({"latency_ms": 1}))
    rolls = [patched.failure_status() for _ in range(15)]
    assert first + rolls == [untouched.failure_status() for _ in range(20)]
    assert (patched.config.latency_ms, patched.config.seed) == (1, 11)


@given(
    seed=st.integers(0, 2**32),
    rate=st.floats(0, 1),
    owed=st.integers(0, 3),
    refused=st.lists(st.booleans(), max_size=40),
)
def test_a_refused_request_gives_back_its_roll_and_the_answered_ones_fail_as_seeded(
    seed: int, rate: float, owed: int, refused: list[bool]
) -> None:
    """A request refused after it took its roll (a chunked body over the cap) gives the
    roll back, failing or not: the answered requests' failures are the seeded sequence's,
    as if the refused ones had never come. Kept, each 413 lost a roll, and a failure
    counted on the dice never reached any caller."""
    config = FaultConfig(error_rate=rate, fail_next=owed, seed=seed)
    stub, untouched = FaultState(config), FaultState(config)
    answered = []
    for refuse in refused:
        draw = stub.take_failure()
        if refuse:
            stub.give_back(draw)
        else:
            answered.append(draw.status)
    assert answered == [untouched.failure_status() for _ in answered]
    assert stub.failure_status() == untouched.failure_status()


def test_a_roll_given_back_survives_a_merge_and_not_new_dice() -> None:
    stub, untouched = FaultState(FaultConfig(error_rate=0.5, seed=3)), FaultState()
    untouched.configure(FaultConfig(error_rate=0.5, seed=3))
    stub.give_back(stub.take_failure())
    stub.merge(FaultConfig.model_validate({"latency_ms": 1}))
    assert [stub.failure_status() for _ in range(10)] == [
        untouched.failure_status() for _ in range(10)
    ]
    draw = stub.take_failure()
    stub.replace(FaultConfig(error_rate=0.5, seed=3))  # new dice: the old roll is void
    stub.give_back(draw)
    untouched.configure(FaultConfig(error_rate=0.5, seed=3))
    assert [stub.failure_status() for _ in range(10)] == [
        untouched.failure_status() for _ in range(10)
    ]


def test_remembered_answers_keep_the_newest_keys_the_oldest_forgotten_first() -> None:
    answers = RememberedAnswers(capacity=3)
    for n in range(5):
        answers.put(("/p", f"k-{n}"), n)
    assert len(answers) == 3
    assert [answers.get(("/p", f"k-{n}")) for n in range(5)] == [None, None, 2, 3, 4]
    answers.clear()
    assert len(answers) == 0


def test_recent_uploads_is_a_list_of_the_newest_uploads() -> None:
    uploads = RecentUploads(capacity=2)
    assert uploads == []
    for n in range(3):
        uploads.append({"received": n})
    assert uploads == [{"received": 1}, {"received": 2}]
    assert uploads[-1] == {"received": 2}


def test_every_stub_bounds_its_keys_and_the_findings_stub_its_uploads() -> None:
    for name in STUB_NAMES:
        app = create_stub_app(name)
        assert app.state.idempotent.capacity == IDEMPOTENCY_MEMORY == 10_000
    assert create_stub_app("findings").state.uploads.capacity == UPLOAD_MEMORY == 1000


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--error-rate", "2"],
            "gateway stub: --error-rate: Input should be less than or equal to 1",
        ),
        (["--error-status", "200"], "gateway stub: --error-status: Input should be greater"),
        (["--max-body-bytes", "-1"], "gateway stub: --max-body-bytes: must be 0 or more"),
        # Without a key the flag was silently ignored: unsigned requests were served.
        (["--require-signature"], "gateway stub: --require-signature needs --verify-key-id"),
        (["--verify-key-id", "g"], "gateway stub: --verify-key-id and --verify-key-env go"),
        (
            ["--verify-key-id", "g", "--verify-key-env", "GATEWAY_TEST_NO_SUCH_VARIABLE"],
            "gateway stub: --verify-key-env: environment variable GATEWAY_TEST_NO_SUCH_VARIABLE",
        ),
    ],
)
def test_bad_stub_flags_are_one_line_and_exit_2_before_anything_starts(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["stub", "--name", "findings", "--port", "1", *flags])
    before = structlog.get_config()
    assert args.handler(args) == 2  # uvicorn never ran: port 1 would have failed
    # Nor was logging configured: a refusal changes no process-wide state.
    assert structlog.get_config()["logger_factory"] is before["logger_factory"]
    assert structlog.get_config()["processors"] == before["processors"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(message)


def test_every_fault_field_and_control_route_is_documented() -> None:
    """Found by an audit (h45): ``/_health`` (readiness) and ``/_frozen`` were in no doc,
    and ``fail_next``, ``fail_status`` and ``retry_after`` were named as flags only."""
    page = (REPO / "app/api/docs/resilience.md").read_text()
    stub_section = page[page.index("## Stub services") :]
    fields = [f for f in FaultConfig.model_fields if f"`{f}`" not in stub_section]
    routes = {
        getattr(route, "path", "")
        for name in STUB_NAMES
        for route in create_stub_app(name).routes
        if getattr(route, "path", "").startswith("/_")
    }
    assert fields == []
    assert sorted(r for r in routes if f"/{r.strip('/')}`" not in stub_section) == []


def test_gateway_stub_serves_with_the_options_stub_config_declares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``gateway stub`` repeated the uvicorn options ``stub_config`` declares (no log
    config, no access log, the stub's shutdown bound): a change to the stub's bound
    reached tests' embedded stubs, not the command. One declaration now serves both."""
    ran: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ran.append(self.config))
    monkeypatch.setattr(stub_command, "configure_logging", lambda: None)  # no process state
    monkeypatch.setattr(stub_server_module, "SHUTDOWN_SECONDS", 5)
    argv = ["stub", "--name", "findings", "--port", "9", "--host", "127.0.0.1"]
    args = build_parser().parse_args(argv)
    assert args.handler(args) == 0
    [config] = ran
    declared = stub_server_module.stub_config(config.app, port=9)  # type: ignore[arg-type]
    fields = ("host", "port", "log_config", "access_log", "timeout_graceful_shutdown")
    assert [getattr(config, f) for f in fields] == [getattr(declared, f) for f in fields]
    assert config.timeout_graceful_shutdown == 5


def test_a_stop_ends_the_holds_that_would_outlast_its_grace_and_only_those() -> None:
    """What a hang, a latency and a slow body wait on (``Stopping``): once the stop has
    begun, a hold ending after the grace ends at once (``False``: cut the request off),
    one ending within it runs its course, a release still releases, a pause is skipped."""

    async def scenario() -> list[object]:
        stopping, release = Stopping(), asyncio.Event()
        long_hold = asyncio.ensure_future(stopping.hold(600))
        released = asyncio.ensure_future(stopping.hold(600, release))
        await asyncio.sleep(0)
        release.set()
        stopping.begin(grace=60)
        short = await stopping.hold(0.01)  # ends within the grace: goes on
        await stopping.pause(600)  # skipped once stopping: the test would time out
        return [await long_hold, await released, short, stopping.begun]

    stopping = Stopping()
    assert asyncio.run(asyncio.wait_for(stopping.hold(0.01), 10)) is True  # no stop: goes on
    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [False, True, True, True]
