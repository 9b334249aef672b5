"""``diff --log``: decisions are found among any other lines, which are skipped and counted."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.authz.diff import flips, read_log
from app.authz.policy import PolicyEngine
from app.cli.main import main
from app.core.config import PolicySettings
from tests.conftest import POLICY_DIR

DECISION = {
    "event": "decision",
    "stage": "authz",
    "subject": "alice",
    "groups": [],
    "engagement": "acme-2026",
    "object": "/v1/engagements/acme-2026/findings",
    "action": "POST",
    "decision": "allow",
}


def test_mixed_stdout_keeps_decisions_and_counts_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "gateway.out"
    lines = [
        "INFO:     Started server process [4242]",  # uvicorn's own console line
        json.dumps(DECISION),
        "gateway-1  | " + json.dumps({**DECISION, "subject": "bob"}),  # docker compose prefix
        json.dumps({"event": "request_completed", "status": 200}),
        json.dumps({"event": "decision", "stage": "authn", "decision": "deny"}),
        json.dumps({**DECISION, "subject": 7}),
        "{truncated",
        "",
        json.dumps(["not", "an", "object"]),
    ]
    log.write_text("\n".join(lines) + "\n")
    reading = read_log(log)
    assert [(p.subject, p.origin) for p in reading.probes] == [
        ("alice", "gateway.out:2"),
        ("bob", "gateway.out:3"),
    ]
    assert dict(reading.skipped) == {
        "not JSON": 3,
        "other events": 1,
        "authn decisions": 1,
        "incomplete decisions": 1,
    }
    assert reading.summary("gateway.out") == (
        "read 2 decision(s) from gateway.out; skipped 6 line(s) that are not authz decisions "
        "(1 authn decisions, 1 incomplete decisions, 3 not JSON, 1 other events)"
    )


def test_a_line_nested_too_deeply_to_parse_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """Another service's line in mixed stdout, nested deeper than ``json`` recurses, was a
    ``RecursionError`` traceback (exit 1, what ``--exit-code`` means by "flips")."""
    log = tmp_path / "gateway.out"
    deep = '{"event": "decision", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    log.write_text(deep + "\n" + json.dumps(DECISION) + "\n")
    reading = read_log(log)
    assert [p.origin for p in reading.probes] == ["gateway.out:2"]
    assert dict(reading.skipped) == {"not JSON": 1}


def test_a_line_with_an_integer_too_long_to_convert_is_skipped(tmp_path: Path) -> None:
    """A 5,000-digit number (past Python's 4,300-digit conversion limit) was a ``ValueError``
    traceback, exit 1: with ``--exit-code``, what CI reads as "decisions flip"."""
    log = tmp_path / "gateway.out"
    huge = '{"event": "decision", "n": ' + "1" * 5_000 + "}"
    log.write_text(huge + "\n" + json.dumps(DECISION) + "\n")
    reading = read_log(log)
    assert [p.origin for p in reading.probes] == ["gateway.out:2"]
    assert dict(reading.skipped) == {"not JSON": 1}
    assert main(["policy", "diff", str(POLICY_DIR), str(POLICY_DIR), "--log", str(log),
                 "--exit-code"]) == 0  # fmt: skip


_JSON_BITS = st.sampled_from(
    ['{"event": "decision"', '"subject": "alice"', '"groups": [', "1" * 4_400, "1e999",
     "NaN", "-", "[" * 50, "]", "}", ",", ":", '"', "\\u", "\\ud800", "null", "{}"]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@example(lines=[['{"event": "decision"', ', "n": ', "1" * 4_400, "}"]])
@given(lines=st.lists(st.lists(st.one_of(_JSON_BITS, st.text(max_size=8)), max_size=8)))
def test_any_log_line_is_read_or_skipped(lines: list[list[str]]) -> None:
    """Whatever a log holds, reading it never raises: a line is a decision or it is counted."""
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "gateway.out"
        text = "".join(_one_line(parts) + "\n" for parts in lines)
        log.write_text(text, encoding="utf-8")
        reading = read_log(log)
    counted = len(reading.probes) + sum(reading.skipped.values())
    assert counted == sum(1 for parts in lines if _one_line(parts).strip())


def _one_line(parts: list[str]) -> str:
    return "".join(parts).replace("\n", " ").replace("\r", " ")


def test_a_decision_log_file_without_event_names_is_read(tmp_path: Path) -> None:
    """A sink that writes only the decision fields (no ``event``/``stage``) is read too."""
    log = tmp_path / "decisions.jsonl"
    fields = {k: v for k, v in DECISION.items() if k not in ("event", "stage")}
    log.write_text(json.dumps(fields) + "\n")
    reading = read_log(log)
    assert len(reading.probes) == 1
    assert not reading.skipped


def test_a_closed_fact_in_the_log_is_replayed(tmp_path: Path) -> None:
    engine = PolicyEngine.load(PolicySettings(dir=POLICY_DIR))
    log = tmp_path / "decisions.jsonl"
    closed = {**DECISION, "decision": "deny", "closed": {"source": "close_saga", "ref": "c-1"}}
    log.write_text(json.dumps(closed) + "\n" + json.dumps(DECISION) + "\n")
    probes = read_log(log).probes
    assert probes[0].closed is not None
    assert probes[1].closed is None
    decided = [
        engine.explain(p.subject, p.engagement, p.path, p.action, closed=p.closed) for p in probes
    ]
    assert [d.allowed for d in decided] == [False, True]
    assert flips(engine, engine, probes) == []
