"""Free text a caller writes: control characters refused (but tab and line breaks),
everything else kept as sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.domain.engagements import CloseRequest, ReopenRequest
from app.domain.findings import FindingCreate

CONTROLS = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}
KEPT = {"\t", "\n", "\r"}


def _accepted(build: object, text: str) -> bool:
    try:
        build(text)  # type: ignore[operator]
    except ValidationError:
        return False
    return True


def _title(text: str) -> FindingCreate:
    return FindingCreate(title="abc" + text, severity="low")  # type: ignore[arg-type]


def _description(text: str) -> FindingCreate:
    return FindingCreate(title="abc", severity="low", description=text)  # type: ignore[arg-type]


@given(st.text(max_size=40))
def test_free_text_is_refused_exactly_when_it_holds_a_control_other_than_tab_or_line_breaks(
    text: str,
) -> None:
    """C0 controls (but tab, LF, CR), DEL and C1 controls, in every free-text field."""
    expected = not (set(text) & (CONTROLS - KEPT))
    assert _accepted(_title, text) is expected
    assert _accepted(_description, text) is expected
    assert _accepted(lambda t: CloseRequest(reason="abc" + t), text) is expected
    assert _accepted(lambda t: ReopenRequest(reason="abc" + t), text) is expected


@pytest.mark.parametrize(
    "text",
    [
        "caf\u00e9 r\u00e9sum\u00e9",
        "\u00a0nbsp",
        "emoji \U0001f512",
        "a\u2028b",
        "two\nlines\r\n\tx",
    ],
)
def test_printable_text_and_line_breaks_are_kept_as_sent(text: str) -> None:
    assert _title(text).title == "abc" + text
    assert CloseRequest(reason="abc" + text).reason == "abc" + text
