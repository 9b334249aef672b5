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
from casbin.util import key_match

from app.authz.compiled import GROUP_PREFIX


def casbin_enforcer(model_path: Path, policy_path: Path) -> Any:
    """A pycasbin enforcer where ``g`` links in engagement ``*`` hold in every engagement."""
    enforcer = casbin.Enforcer(str(model_path), str(policy_path))
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
