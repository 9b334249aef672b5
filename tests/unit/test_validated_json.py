"""Answers relayed as the service sent them only when they are strictly the model's JSON."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from app.domain.findings import FindingList
from app.domain.validated import ValidatedJson

GOOD = {
    "engagement_id": "acme-2026",
    "count": 1,
    "items": [
        {
            "id": "F-0001",
            "engagement_id": "acme-2026",
            "title": "SQL injection",
            "severity": "high",
            "status": "open",
            "description": "",
            "created_by": "alice",
            "created_at": "2026-01-05T10:00:00Z",
        }
    ],
}


def test_a_conforming_body_is_kept_byte_for_byte() -> None:
    body = json.dumps(GOOD, indent=1).encode()
    checked = ValidatedJson.check(FindingList, body)
    assert checked.body is body
    assert checked.parsed().items[0].id == "F-0001"


@pytest.mark.parametrize(
    "change",
    [
        {"count": "1"},  # lax mode would coerce the string: strict refuses it
        {"count": 1.5},
        {"extra": True},  # unknown fields would be relayed to callers
        {"items": [{**GOOD["items"][0], "severity": "urgent"}]},
    ],
    ids=["string-int", "float-int", "unknown-field", "bad-enum"],
)
def test_anything_not_strictly_the_model_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ValidatedJson.check(FindingList, json.dumps({**GOOD, **change}).encode())
