"""The catalogues in the docs list what the code can emit: problem types, metric
families and the authn stage's reasons. A new one that is not documented fails here."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
import yaml

import app
from app.api.problems import _HTTP_CODES
from app.authn.verifier import Reason
from app.core.errors import ConfigError, GatewayError
from app.edge import server
from app.ops import metrics

DOCS = Path(app.__file__).parent / "api" / "docs"
# Codes the handlers of app/api/problems.py render besides the GatewayError tree.
HANDLER_CODES = {(422, "validation_error"), *((s, c) for s, c in _HTTP_CODES.items())}


def _subclasses(cls: type[GatewayError]) -> Iterator[type[GatewayError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _every_error_class() -> set[type[GatewayError]]:
    """Every GatewayError defined anywhere in ``app`` (modules imported to find them)."""
    for module in pkgutil.walk_packages(app.__path__, "app."):
        importlib.import_module(module.name)
    return {GatewayError, *_subclasses(GatewayError)} - {ConfigError}


def _catalogue() -> set[tuple[int, str]]:
    """(status, code) of every row of errors.md's table."""
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    return {(int(s), c) for s, c in re.findall(r"^\| (\d{3}) \| `([a-z_]+)`", text, re.M)}


def test_every_problem_the_code_can_answer_is_in_errors_md() -> None:
    emitted = {(cls.status_code, cls.code) for cls in _every_error_class()}
    emitted |= {(r.status, r.code) for r in vars(server).values() if isinstance(r, server.Refusal)}
    emitted |= HANDLER_CODES
    assert emitted - _catalogue() == set(), "add these (status, code) rows to errors.md"


def test_errors_md_lists_no_problem_the_code_never_answers() -> None:
    emitted = {(cls.status_code, cls.code) for cls in _every_error_class()}
    emitted |= {(r.status, r.code) for r in vars(server).values() if isinstance(r, server.Refusal)}
    assert _catalogue() - emitted - HANDLER_CODES == set()


def _families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name on the wire -> (type, label names) of every metric family metrics.py defines."""
    found = {}
    # prometheus_client exposes a family's label names only on these attributes.
    for value in vars(metrics).values():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            found[name] = (value._type, tuple(value._labelnames))
    return found


def _documented_families() -> dict[str, tuple[str, str]]:
    """name -> (type, labels cell) from the table under operations.md's Metrics."""
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(gateway_[a-z_]+)` \| (\w+) \| ([^|]*) \|", section, re.M)
    return {name: (kind, labels) for name, kind, labels in rows}


def test_every_metric_family_is_in_the_operations_table_with_its_type_and_labels() -> None:
    documented = _documented_families()
    assert set(_families()) == set(documented)
    for name, (kind, labels) in _families().items():
        assert documented[name][0] == kind, name
        named = re.findall(r"`([a-z_]+)`", documented[name][1])
        assert all(label in named for label in labels), (name, labels, documented[name][1])


@pytest.mark.parametrize("reason", list(Reason))
def test_every_authn_reason_is_in_the_signing_profile_check_table(reason: Reason) -> None:
    text = (DOCS / "signing.md").read_text(encoding="utf-8")
    table = text.split("## 3. What the gateway checks", 1)[1].split("\n## ", 1)[0]
    assert re.search(rf"\| `{reason.value}` \|$", table, re.M), reason.value


def test_the_decision_example_is_the_demo_configuration_it_says_it_is() -> None:
    text = (DOCS / "decisions.md").read_text(encoding="utf-8")
    example = text.split("(`config/demo.yaml` has it)", 1)[1].split("```yaml\n", 1)[1]
    demo = yaml.safe_load((DOCS.parents[2] / "config" / "demo.yaml").read_text(encoding="utf-8"))
    assert yaml.safe_load(example.split("```", 1)[0]) == {"authorizer": demo["authorizer"]}
