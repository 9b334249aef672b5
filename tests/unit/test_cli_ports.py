"""``--port`` of serve and stub: a TCP port or argparse's error, never a wrapped number."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.cli.main import build_parser
from app.cli.ports import tcp_port


@given(st.integers(min_value=0, max_value=65_535))
def test_every_port_is_taken_as_itself(port: int) -> None:
    assert tcp_port(str(port)) == port


@given(st.integers().filter(lambda n: not 0 <= n <= 65_535))
def test_a_number_outside_the_range_is_refused(number: int) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a port from 0 to 65535"):
        tcp_port(str(number))


@pytest.mark.parametrize("command", [["serve"], ["stub", "--name", "findings"]])
def test_serve_and_stub_refuse_a_port_that_would_wrap(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve --port 113181`` logged 113181 and listened on 47645 (113181 - 65536)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--port", "113181"])
    assert exited.value.code == 2
    assert "113181 is not a port from 0 to 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--port", "eighty"])
