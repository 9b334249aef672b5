"""The reference: plain pycasbin on the same model and policy files.

Used to prove the compiled path (``tests/unit/test_policy_differential.py``),
by ``gateway policy explain --casbin`` and by the benchmark as the baseline.
Never on the request path: ``enforce()`` scans every line, and on CPython 3.11.7
concurrent ``enforce()`` from threads can raise ``SystemError`` (gh-106905), so
callers run it on one thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import casbin
from casbin.persist.adapters.string_adapter import StringAdapter
from casbin.util import key_match

from app.authz.compiled import GROUP_PREFIX


def casbin_enforcer(model_path: Path, policy_path: Path) -> Any:
    """A pycasbin enforcer where ``g`` links in engagement ``*`` hold in every engagement."""
    return casbin_enforcer_of(model_path.read_bytes(), policy_path.read_bytes())


def casbin_enforcer_of(model: bytes, policy: bytes) -> Any:
    """``casbin_enforcer`` on the files' bytes as read once (a snapshot), not on their paths.

    The policy's lines are given as pycasbin's file adapter reads them: split at
    ``\n``, each stripped.
    """
    lines = "\n".join(line.strip() for line in policy.decode("utf-8").split("\n"))
    adapter = StringAdapter(lines) if lines.strip() else None  # it refuses an empty text
    enforcer = casbin.Enforcer(casbin.Enforcer.new_model(text=model.decode("utf-8")), adapter)
    enforcer.add_named_domain_matching_func("g", key_match)
    return enforcer


def reference_decide(
    enforcer: Any,
    role_names: frozenset[str],
    subject: str,
    groups: Sequence[str],
    request: tuple[str, str, str],
) -> tuple[bool, tuple[str, ...]]:
    """Casbin ``enforce_ex`` per principal, combined with deny beating allow."""
    if subject in role_names:
        return False, ()
    dom, obj, act = request
    answers = [
        enforcer.enforce_ex(principal, dom, obj, act)
        for principal in (subject, *(GROUP_PREFIX + g for g in groups))
    ]
    for _allowed, rule in answers:
        if rule and rule[-1] == "deny":
            return False, tuple(rule)
    for allowed, rule in answers:
        if allowed:
            return True, tuple(rule)
    return False, ()
