"""The shipped njs signer checks what it signs with the gateway's own grammar.

``deploy/nginx/authz-signer.js`` refuses to sign a subject, a group or a key id the
gateway would refuse anyway; its patterns are copies of the gateway's, and a copy
that drifts signs requests the gateway refuses (or refuses requests it accepts).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.authn.keys import MIN_SECRET_BYTES
from app.core.config import KEY_ID_PATTERN
from app.domain.identity import GROUP_PATTERN, SUBJECT_PATTERN

SIGNER = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "authz-signer.js"


def _constant(name: str) -> str:
    """The right-hand side of ``const NAME = ...;`` in the signer, as written."""
    match = re.search(rf"^const {name} = (.+);$", SIGNER.read_text(), re.MULTILINE)
    assert match is not None, f"no const {name} in {SIGNER}"
    return match.group(1)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("SUBJECT", SUBJECT_PATTERN.pattern),
        ("GROUP", GROUP_PATTERN.pattern),
        # Was /^[A-Za-z0-9._:-]{1,64}$/: "-k" or ".k" was signed, then refused unknown_key.
        ("KEY_ID", KEY_ID_PATTERN),
    ],
)
def test_each_pattern_is_the_gateways(name: str, pattern: str) -> None:
    assert _constant(name) == f"/{pattern}/"


def test_the_shortest_secret_is_the_gateways() -> None:
    assert int(_constant("MIN_SECRET_BYTES")) == MIN_SECRET_BYTES
