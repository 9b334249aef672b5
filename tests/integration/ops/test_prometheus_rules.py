"""deploy/prometheus: the shipped alerting rules hold, and watch series the gateway exports.

Three things can go wrong with a rule file, and each has its check here:

- it does not load (``promtool check rules``);
- an alert fires when it should not, or never fires (``promtool test rules`` on
  alerts.test.yml; and each alert's expression is replaced by one that never and
  one that always holds, which must make that file fail: every alert has a case
  that fires and one that must not);
- it watches a series the gateway does not export (a metric renamed, a label
  dropped, a reason word changed): the rule loads and stays silent for ever. So a
  real ``gateway serve --workers 2`` (Redis, rate limits, tracing on) is scraped and
  every metric name, label name and listed label value the rules use must be on
  its ``/metrics`` page.

The expressions are read with regular expressions, not a PromQL parser (there is no
Python one worth a dependency): selectors ``name{matchers}``, grouping clauses
``by (...)``/``on (...)`` and ``$labels.x`` in annotations. Enough for these rules; a
construct they do not cover fails ``test_rules_use_only_constructs_this_check_reads``.

Under ``CI=true`` a missing promtool is a failure, never a skip: ``make test``
installs it (scripts/ensure-packages.sh), as for nginx and Redis.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.authn.identity import SUBJECT_HEADER
from app.authn.signer import message_from_httpx, sign_headers
from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import (
    POLICY_DIR,
    REPO,
    TEST_KEY_ENV,
    TEST_KEY_ID,
    TEST_SECRET,
    LiveServer,
    free_port,
    make_settings,
    signer,
)
from tests.integration.ops.conftest import FINDINGS, ServedProcess
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts.test.yml"
DOCS = REPO / "app" / "api" / "docs"
SEVERITIES = {"critical", "warning"}
# Labels Prometheus adds to every scraped series (the target's), never on the page.
TARGET_LABELS = {"job", "instance"}
# Label values the check does not look up: HTTP statuses are numbers, not names.
UNCHECKED_VALUES = {"status"}

SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*,?')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
METRIC = re.compile(r"\bgateway_[a-z0-9_]+\b")
LABEL_REF = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
PLAIN_ALTERNATIVES = re.compile(r"[A-Za-z0-9_/{}.-]+(\|[A-Za-z0-9_/{}.-]+)*")
# Every word an expression may hold besides metric names and grouping clauses.
FUNCTIONS = {
    "sum", "count", "max", "min", "rate", "increase", "histogram_quantile", "unless",
    "and", "or", "by", "on", "group_left",
}  # fmt: skip


def promtool() -> str:
    binary = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing; make test installs it (scripts/ensure-packages.sh)")
        pytest.skip("promtool (Debian package prometheus) is not installed (make test does it)")
    return binary


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def run_promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# --- The rule file on its own -----------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    done = run_promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _with_expr(target: Path, name: str, expr: str) -> Path:
    """Both files copied into ``target``, with alert ``name``'s expression replaced."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == name:
                rule["expr"] = expr
    target.mkdir()
    (target / RULES.name).write_text(yaml.safe_dump(document))
    shutil.copyfile(RULE_TESTS, target / RULE_TESTS.name)
    return target


@pytest.mark.parametrize("name", [rule["alert"] for rule in alerts()])
def test_every_alert_has_a_case_that_fires_and_one_that_must_not(name: str, tmp_path: Path) -> None:
    never = _with_expr(tmp_path / "never", name, "vector(1) == 0")
    done = run_promtool("test", "rules", RULE_TESTS.name, cwd=never)
    assert done.returncode != 0, f"{name}: no case expects it to fire"
    always = _with_expr(tmp_path / "always", name, "vector(1)")
    done = run_promtool("test", "rules", RULE_TESTS.name, cwd=always)
    assert done.returncode != 0, f"{name}: no case expects it to stay quiet"
    assert "FAILED" in done.stdout + done.stderr


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_a_severity_and_a_runbook_that_exists(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook"}
    page, _, anchor = annotations["runbook"].partition("#")
    assert page.startswith("app/api/docs/")
    assert (REPO / page).is_file(), page
    if anchor:
        assert anchor in _anchors(REPO / page), annotations["runbook"]


# --- What the rules reference ------------------------------------------------------


class Reference:
    """The metric names, label names and listed label values one alert uses."""

    def __init__(self, rule: dict[str, Any]) -> None:
        expr = rule["expr"]
        self.grouping = {
            label.strip()
            for labels in GROUPING.findall(expr)
            for label in labels.split(",")
            if label.strip()
        }
        self.metrics = set(METRIC.findall(expr))
        # (metric, label, operator, value) for every matcher of every selector
        self.matchers: list[tuple[str, str, str, str]] = []
        for metric, body in SELECTOR.findall(expr):
            assert MATCHER.sub("", body).strip() == "", f"unread matchers: {body}"
            for label, operator, value in MATCHER.findall(body):
                self.matchers.append((metric, label, operator, value))
        text = " ".join(str(v) for v in [*rule["annotations"].values(), *rule["labels"].values()])
        self.label_refs = set(LABEL_REF.findall(text))
        self.rest = METRIC.sub(" ", SELECTOR.sub(" ", GROUPING.sub(" ", expr)))


def test_rules_use_only_constructs_this_check_reads() -> None:
    for rule in alerts():
        reference = Reference(rule)
        words = set(re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_]*\b", reference.rest))
        # durations ([5m]) leave "m"/"h"; anything else is a name this check does not see
        assert words <= FUNCTIONS | {"m", "h"}, (rule["alert"], words - FUNCTIONS)
        assert reference.metrics, rule["alert"]
        assert all(metric.startswith("gateway_") for metric, *_ in reference.matchers)


def test_route_matchers_name_routes_the_gateway_has(test_key_env: str) -> None:
    routes = {getattr(route, "path", "") for route in create_app(make_settings()).routes}
    for rule in alerts():
        for _, label, _, value in Reference(rule).matchers:
            if label != "route":
                continue
            if PLAIN_ALTERNATIVES.fullmatch(value):  # a list of templates: each one exists
                assert set(value.split("|")) <= routes, (rule["alert"], value)
            else:  # Prometheus anchors its regular expressions at both ends
                pattern = re.compile(value)
                assert any(pattern.fullmatch(route) for route in routes), (rule["alert"], value)


CONFIG = """
signing:
  keys: [{{id: {key_id}, secret_env: {env}}}]
policy: {{dir: "{policy}"}}
services:
  findings: {{url: "{url}"}}
redis: {{url: "{redis}"}}
ops:
  rate_limit:
    subject: {{limit: 1000, window_seconds: 60}}
    engagement: {{limit: 1000, window_seconds: 60}}
tracing: {{enabled: true, endpoint: "http://127.0.0.1:{otlp}/v1/traces"}}
log: {{format: json}}
"""


@pytest.fixture
def served_gateway(
    live_server: Callable[[FastAPI], LiveServer],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ServedProcess]:
    """``gateway serve --workers 2`` with every optional series on: Redis, limits, tracing."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    stub = live_server(create_stub_app("findings"))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        CONFIG.format(
            key_id=TEST_KEY_ID,
            env=TEST_KEY_ENV,
            policy=POLICY_DIR,
            url=stub.url,
            redis=redis_server.url,
            otlp=free_port(),  # nothing listens: spans are dropped, which is fine here
        )
    )
    port = free_port()
    argv = ["serve", "--port", str(port), "--config", str(config), "--workers", "2"]
    process = ServedProcess(
        port, [sys.executable, "-m", "app.cli.main", *argv], tmp_path / "gateway.log"
    )
    yield process
    process.close()


def _dated_ahead(url: str) -> httpx.Request:
    """A signed GET whose ``created`` lies 30 s ahead: accepted, and counted as such."""
    request = httpx.Request("GET", url + FINDINGS, headers={SUBJECT_HEADER: "alice"})
    request.headers.update(
        sign_headers(
            message_from_httpx(request),
            b"",
            key_id=TEST_KEY_ID,
            secret=TEST_SECRET,
            created=int(time.time()) + 30,
        )
    )
    return request


def _exposed(text: str) -> dict[str, dict[str, set[str]]]:
    """Sample name (and family name) -> label name -> the values seen."""
    seen: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name in (sample.name, family.name):
                labels = seen.setdefault(name, {})
                for label, value in sample.labels.items():
                    labels.setdefault(label, set()).add(value)
    return seen


def test_every_series_the_rules_watch_is_exported(served_gateway: ServedProcess) -> None:
    url = served_gateway.url
    with httpx.Client(timeout=10) as client:
        assert client.get(url + "/readyz").status_code == 200
        assert client.get(url + "/healthz").status_code == 200
        signed = next(signer("alice").auth_flow(httpx.Request("GET", url + FINDINGS)))
        assert client.send(signed).status_code == 200
        assert client.send(_dated_ahead(url)).status_code == 200
        text = client.get(url + "/metrics").text
    exposed = _exposed(text)
    for rule in alerts():
        name = rule["alert"]
        reference = Reference(rule)
        for metric in reference.metrics:
            assert metric in exposed, f"{name}: {metric} is not on /metrics"
        labels = TARGET_LABELS | {"le"}
        for metric in reference.metrics:
            labels |= set(exposed[metric])
        assert reference.grouping <= labels, (name, reference.grouping - labels)
        assert reference.label_refs <= labels, (name, reference.label_refs - labels)
        for metric, label, operator, value in reference.matchers:
            assert label in exposed[metric], f"{name}: {metric} has no label {label}"
            if label in UNCHECKED_VALUES or label == "route":  # routes: the test above
                continue
            if operator in ("=", "=~", "!~") and PLAIN_ALTERNATIVES.fullmatch(value):
                missing = set(value.split("|")) - exposed[metric][label]
                assert not missing, f"{name}: {metric}{{{label}}} never has {missing}"
