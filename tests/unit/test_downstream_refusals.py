"""The downstream 4xx table: the code agrees with resilience.md, row by row."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from app.core.errors import DownstreamError, GatewayError
from app.downstream.client import raise_for_client_error
from app.downstream.refusals import MEANINGS, client_error

PAGE = Path(__file__).resolve().parents[2] / "app" / "api" / "docs" / "resilience.md"
CELL = re.compile(r"^(\d{3}) `([a-z_]+)`")
OTHERS = [401, 403, 405, 406, 407, 408, 411, 414, 417, 418, 421, 423, 424, 425, 426, 428, 431, 451]


def documented_rows() -> dict[str, tuple[str, str]]:
    """``status -> (typed cell, pass-through cell)`` from the page's 4xx table."""
    text = PAGE.read_text().split("## What a service's 4xx means to the caller", 1)[1]
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and (cells[0].isdigit() or cells[0].startswith("any other 4xx")):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def outcome(status: int, *, passthrough: bool, headers: dict[str, str] | None = None) -> str:
    response = httpx.Response(status, headers=headers, json={"detail": "internal secret"})
    error = client_error("findings", response, passthrough=passthrough)
    assert isinstance(error, GatewayError)
    assert "internal secret" not in error.detail
    return f"{error.status_code} `{error.code}`"


def expected(cell: str) -> str:
    match = CELL.match(cell)
    assert match, f"unreadable cell {cell!r}"
    return f"{match.group(1)} `{match.group(2)}`"


def test_the_page_lists_every_kept_status_and_the_rest() -> None:
    rows = documented_rows()
    statuses = {int(status) for status in rows if status.isdigit()}
    assert statuses == set(MEANINGS)
    assert any(status.startswith("any other 4xx") for status in rows)


@pytest.mark.parametrize("status", sorted(MEANINGS))
def test_each_documented_row_is_what_the_code_does(status: int) -> None:
    typed, passthrough = documented_rows()[str(status)]
    assert outcome(status, passthrough=False) == expected(typed)
    assert outcome(status, passthrough=True) == expected(passthrough)


@pytest.mark.parametrize("status", OTHERS)
def test_every_other_4xx_is_a_gateway_fault_on_both_kinds_of_route(status: int) -> None:
    row = next(v for k, v in documented_rows().items() if k.startswith("any other 4xx"))
    assert expected(row[0]) == expected(row[1]) == "502 `bad_gateway`"
    with capture_logs() as logs:
        assert outcome(status, passthrough=False) == "502 `bad_gateway`"
        assert outcome(status, passthrough=True) == "502 `bad_gateway`"
    assert [line["status"] for line in logs if line["event"] == "downstream_rejected"] == [
        status,
        status,
    ]


def test_a_typed_route_keeps_a_services_409_and_404() -> None:
    """Issue 12: a 409 on frozen findings read as an outage (502); it is a conflict."""
    for status in (404, 409):
        with pytest.raises(GatewayError) as raised:
            raise_for_client_error("findings", httpx.Response(status, text="frozen"))
        assert raised.value.status_code == status
        assert not isinstance(raised.value, DownstreamError)


def test_only_well_formed_headers_are_kept() -> None:
    limited = client_error("reports", httpx.Response(429, headers={"retry-after": "7"}))
    assert limited is not None
    assert limited.headers == {"retry-after": "7"}
    odd = client_error("reports", httpx.Response(429, headers={"retry-after": "7\r\nx: y"}))
    assert odd is not None
    assert odd.headers == {}
    unsatisfied = httpx.Response(416, headers={"content-range": "bytes */1000"})
    kept = client_error("reports", unsatisfied, passthrough=True)
    assert kept is not None
    assert kept.headers == {"content-range": "bytes */1000"}


def test_successes_and_redirects_are_not_errors() -> None:
    for status in (200, 201, 204, 206, 304):
        assert client_error("reports", httpx.Response(status), passthrough=True) is None
