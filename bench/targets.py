"""The rows of the benchmark: each a server (tree) and the requests it is sent.

All rows sit in front of one stub (``bench.fast_stub``). Python rows run under
uvicorn with uvloop + httptools, one process each; the gateway is started with
its own CLI (``gateway serve``) exactly as an operator would.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bench.nginx import ensure_nginx, nginx_server
from bench.policygen import NAIVE_SOURCE, load_callers, write_policy
from bench.procs import Server, free_port, python_argv
from bench.with_redis import missing

REPO = Path(__file__).resolve().parent.parent
BENCH_KEY_ID = "bench-2026"
BENCH_KEY_ENV = "GATEWAY_BENCH_KEY"
# A documented benchmark-only key; it never signs anything outside a bench run.
BENCH_SECRET = b"bench-secret-not-for-production-0123456789"
GATEWAY_PATH = "/v1/engagements/{engagement}/findings"
# The decision endpoint asked about the same request, in its Envoy form (the original
# method and path are the request's own, so the generator's signature covers them).
DECISION_PATH = "/v1/decisions/envoy/v1/engagements/{engagement}/findings"
STUB_PATH = "/engagements/{engagement}/findings"
# A declarative pass-through route of the bench gateway, to the same stub answer.
PASSTHROUGH_PATH = "/v1/engagements/{engagement}/reports/R-0001/content"
PASSTHROUGH_ROUTE = {
    "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
    "service": "findings",
    "upstream_path": "/engagements/{engagement_id}/findings",
}


@dataclass
class Target:
    """One row: how to start it, what to send, and where it stands."""

    key: str
    label: str
    path_template: str
    callers: list[tuple[str, str]]
    server: Server | None = None
    ready_path: str = "/_health"
    note: str = ""
    extra_pids: list[int] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.server is not None and not self.note.startswith("unavailable")


def service_settings(url: str) -> dict[str, Any]:
    """The findings service with a keep-alive pool as large as the baselines' (100).

    Falls back to the defaults if this commit's ``ServiceSettings`` has no such field.
    """
    from app.core.config import ServiceSettings

    tuned = {"url": url, "max_keepalive": 100}
    try:
        ServiceSettings.model_validate(tuned)
    except ValidationError:
        return {"url": url}
    return tuned


# The replay cache holds each nonce for up to twice the skew window, so RSS grows
# until that window is full. A 10 s skew (NTP-synced hosts) fills it within the
# soak's warm-up, so the soak measures leaks rather than the cache's designed size.
BENCH_SKEW_SECONDS = 10


def gateway_config(
    root: Path,
    stub_port: int,
    policy_dir: Path,
    tracing: dict[str, Any] | None = None,
    baseline: Path | None = None,
    shadow_dir: Path | None = None,
) -> Path:
    """The gateway rows' settings; ``tracing``: the tracing section (its own file).

    ``baseline``: the source tree of the commit before tracing; its settings are
    the same but for sections that commit does not know.
    """
    from app.core.config import Settings

    if baseline is not None:
        has_authorizer = "authorizer:" in (baseline / "app/core/config.py").read_text()
    else:
        has_authorizer = "authorizer" in Settings.model_fields

    settings: dict[str, Any] = {
        "signing": {
            "keys": [{"id": BENCH_KEY_ID, "secret_env": BENCH_KEY_ENV}],
            "max_skew_seconds": BENCH_SKEW_SECONDS,
        },
        "policy": {"dir": str(policy_dir)},
        "services": {"findings": service_settings(f"http://127.0.0.1:{stub_port}")},
        "log": {"level": "INFO", "format": "json"},
    }
    if has_authorizer:  # the decision endpoint exists on this commit
        settings["authorizer"] = {"routes": ["/v1/engagements/{engagement_id}/findings"]}
    if _supports_passthrough():
        settings["orchestration"] = {"passthrough": [PASSTHROUGH_ROUTE]}
    name = "gateway-baseline.yaml" if baseline is not None else "gateway.yaml"
    if shadow_dir is not None:  # issue 16: a candidate decided beside the live policy
        settings["policy"]["shadow_dir"] = str(shadow_dir)
        name = "gateway-shadow.yaml"
    if tracing is not None:
        settings["tracing"] = tracing
        name = f"gateway-trace-{tracing.get('sample_ratio', 'env')}.yaml"
    path = root / name
    path.write_text(yaml.safe_dump(settings))
    return path


def shadow_policy(root: Path, policy_dir: Path) -> Path:
    """A candidate of the same size and a different revision that flips none of the load:
    the row measures what deciding every request twice costs, not flip logging."""
    target = root / "policy-shadow"
    shutil.copytree(policy_dir, target)
    with (target / "policy.csv").open("a") as policy:
        policy.write("g, bench-shadow-candidate, analyst, *\n")
    return target


SHADOW_ROW = ("gateway_shadow", "gateway (shadow policy)")


def _supports_shadow() -> bool:
    from app.core.config import PolicySettings

    return "shadow_dir" in PolicySettings.model_fields


def _shadow_row(
    root: Path, stub_port: int, policy_dir: Path, callers: list[tuple[str, str]]
) -> Target:
    """Issue 16: the gateway row with a shadow candidate decided on every request."""
    if not _supports_shadow():
        note = "unavailable: policy.shadow_dir is not a setting on this commit"
        return Target(*SHADOW_ROW, GATEWAY_PATH, callers, note=note)
    shadow = shadow_policy(root, policy_dir)
    config = gateway_config(root, stub_port, policy_dir, shadow_dir=shadow)
    return _gateway(root, config, 1, callers, row=SHADOW_ROW)


def _supports_passthrough() -> bool:
    """Whether this commit's settings accept the bench's pass-through route."""
    from app.core.config import PassthroughRoute

    try:
        PassthroughRoute.model_validate(PASSTHROUGH_ROUTE)
    except ValidationError:
        return False
    return True


def serve_supports_workers() -> bool:
    done = subprocess.run(  # fixed argv: our own CLI
        [sys.executable, "-m", "app.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return "--workers" in done.stdout


# (workers, Redis topology) -> row key and label; goals.py compares gateway_w2 with
# gateway_redis, the report each other topology's two-worker row with gateway_w2.
ROW_NAMES = {
    (1, None): ("gateway", "gateway"),
    (1, "standalone"): ("gateway_redis", "gateway (Redis)"),
    (2, "standalone"): ("gateway_w2", "gateway (2 workers, Redis)"),
    (2, "cluster"): ("gateway_w2_cluster", "gateway (2 workers, Redis Cluster 3+3)"),
    (2, "sentinel"): ("gateway_w2_sentinel", "gateway (2 workers, Sentinel 1+1+3)"),
}
# Issue 14: the gateway with tracing on (OTLP/HTTP to the stub, which answers 200) at
# two sampling ratios, and the gateway of the commit before tracing (tracing's cost off).
TRACE_ROWS = {
    1.0: ("gateway_trace", "gateway (tracing on, ratio 1.0)"),
    0.1: ("gateway_trace01", "gateway (tracing on, ratio 0.1)"),
}
BASE_ROW = ("gateway_base", "gateway (commit before tracing)")
HA_TOPOLOGIES = ("cluster", "sentinel")
HA_ROWS = tuple(ROW_NAMES[(2, topology)][0] for topology in HA_TOPOLOGIES)


def _gateway(
    root: Path,
    config: Path,
    workers: int,
    callers: list[tuple[str, str]],
    redis: str | None = None,
    row: tuple[str, str] | None = None,
    tree: Path | None = None,
) -> Target:
    """The gateway row; ``redis``: the private Redis deployment it shares state through.

    ``row`` names another row (key, label); ``tree``: run the code of that source tree.
    """
    port = free_port()
    argv = python_argv("app.cli.main", "serve", "--port", str(port), "--config", str(config))
    if workers > 1:
        argv += ["--workers", str(workers)]
    if redis is not None:
        argv = python_argv("bench.with_redis", "--topology", redis, *argv)
    key, label = row or ROW_NAMES[(workers, redis)]
    env = {BENCH_KEY_ENV: BENCH_SECRET.decode()}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    server = Server(key, port, argv, env, root / f"{key}.log", cwd=tree)
    return Target(key, label, GATEWAY_PATH, callers, server, ready_path="/healthz")


def _decision(root: Path, config: Path, callers: list[tuple[str, str]]) -> Target:
    """The decision endpoint on a gateway of its own, configured as the gateway row."""
    from app.core.config import Settings

    key, label = "decision", "gateway decision endpoint (authorizer)"
    if "authorizer" not in Settings.model_fields:
        note = "unavailable: no decision endpoint on this commit"
        return Target(key, label, DECISION_PATH, callers, note=note)
    port = free_port()
    argv = python_argv("app.cli.main", "serve", "--port", str(port), "--config", str(config))
    server = Server(key, port, argv, {BENCH_KEY_ENV: BENCH_SECRET.decode()}, root / f"{key}.log")
    return Target(key, label, DECISION_PATH, callers, server, ready_path="/healthz")


def _git(*args: str) -> str:
    done = subprocess.run(  # fixed argv: git, in this checkout
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def tracing_baseline() -> str:
    """The commit before the first ``Tracing:`` commit of HEAD's history (issue 14)."""
    subjects = _git("log", "--format=%H %s", "HEAD").splitlines()
    tracing = [line.split(" ", 1)[0] for line in subjects if " Tracing:" in f" {line[41:]}"]
    if not tracing:
        raise RuntimeError("no `Tracing:` commit in HEAD's history")
    return _git("rev-parse", f"{tracing[-1]}^")


def baseline_tree(root: Path, ref: str | None) -> tuple[Path, str]:
    """The source tree of ``ref`` (default: ``tracing_baseline()``) under ``root``."""
    commit = _git("rev-parse", ref) if ref else tracing_baseline()
    tree = root / f"baseline-{commit[:12]}"
    tree.mkdir()
    archive = subprocess.run(  # fixed argv: git archive of a resolved commit
        ["git", "archive", commit], cwd=REPO, capture_output=True, check=True, timeout=120
    )
    subprocess.run(  # fixed argv: unpack it
        ["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=120
    )
    return tree, commit


def baseline_policy(root: Path, policy: Path, tree: Path) -> Path:
    """``policy`` (the same rules) with the baseline's own suites: its reload gate runs
    them, and it cannot read suites written in a later format (fixtures, reasons)."""
    target = root / f"policy-{tree.name}"
    shutil.copytree(policy, target, ignore=shutil.ignore_patterns("tests"))
    if (tree / "policies" / "tests").is_dir():
        shutil.copytree(tree / "policies" / "tests", target / "tests")
    return target


def _tracing_rows(
    root: Path, stub_port: int, policy: Path, callers: list[tuple[str, str]], baseline: str | None
) -> list[Target]:
    endpoint = f"http://127.0.0.1:{stub_port}/v1/traces"
    rows = []
    for ratio, row in TRACE_ROWS.items():
        tracing = {"enabled": True, "sample_ratio": ratio, "endpoint": endpoint}
        config = gateway_config(root, stub_port, policy, tracing)
        rows.append(_gateway(root, config, 1, callers, row=row))
    try:
        tree, commit = baseline_tree(root, baseline)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        note = f"unavailable: no baseline tree ({exc})"
        return [*rows, Target(*BASE_ROW, GATEWAY_PATH, callers, note=note)]
    config = gateway_config(root, stub_port, baseline_policy(root, policy, tree), baseline=tree)
    key, label = BASE_ROW
    row = (key, label.replace(")", f", {commit[:12]})"))
    return [*rows, _gateway(root, config, 1, callers, row=row, tree=tree)]


def build_targets(
    root: Path,
    stub_port: int,
    gateway_lines: int,
    naive_lines: int,
    install_nginx: bool,
    baseline: str | None = None,
) -> list[Target]:
    """Every row, not yet started; rows that cannot run carry an 'unavailable' note."""
    upstream = f"http://127.0.0.1:{stub_port}"
    gw_policy = write_policy(root / f"policy-{gateway_lines}", gateway_lines)
    naive_policy = write_policy(root / f"policy-{naive_lines}", naive_lines, NAIVE_SOURCE)
    gw_callers = load_callers(gateway_lines)
    targets = [
        Target("direct", "direct stub", STUB_PATH, gw_callers),
        _nginx(root, stub_port, gw_callers, install_nginx),
    ]
    for client in ("aiohttp", "ours"):
        port = free_port()
        argv = python_argv(
            "bench.bare_proxy", "--client", client, "--port", str(port), "--upstream", upstream
        )
        label = f"bare proxy ({'aiohttp' if client == 'aiohttp' else 'our client'})"
        server = Server(f"bare_{client}", port, argv, log_path=root / f"bare_{client}.log")
        targets.append(Target(f"bare_{client}", label, STUB_PATH, gw_callers, server))
        if client == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
            targets[-1].note = "unavailable: aiohttp missing (pip install -e '.[bench]')"

    port = free_port()
    naive_argv = python_argv(
        "bench.naive_gateway",
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--policy-dir",
        str(naive_policy),
        "--secret-env",
        BENCH_KEY_ENV,
    )
    naive = Server("naive", port, naive_argv, {BENCH_KEY_ENV: BENCH_SECRET.decode()})
    targets.append(
        Target(
            "naive",
            "naive gateway",
            GATEWAY_PATH,
            load_callers(naive_lines, source=NAIVE_SOURCE),
            naive,
            ready_path="/healthz",
        )
    )
    config = gateway_config(root, stub_port, gw_policy)
    targets.append(_gateway(root, config, 1, gw_callers))
    targets.append(_decision(root, config, gw_callers))
    targets.append(_passthrough_row(root, config, gw_callers))
    targets.append(_shadow_row(root, stub_port, gw_policy, gw_callers))
    targets.extend(_tracing_rows(root, stub_port, gw_policy, gw_callers, baseline))
    if shutil.which("redis-server") is None:
        for key, label in (v for k, v in ROW_NAMES.items() if k[1] is not None):
            note = "unavailable: redis-server missing (make test installs it)"
            targets.append(Target(key, label, GATEWAY_PATH, gw_callers, note=note))
    elif serve_supports_workers():
        # Several workers need Redis (per-process nonces would accept cross-worker
        # replays), so the two-worker row is compared with one worker on Redis too.
        targets.append(_gateway(root, config, 1, gw_callers, redis="standalone"))
        targets.append(_gateway(root, config, 2, gw_callers, redis="standalone"))
        targets += [_ha_gateway(root, config, gw_callers, topology) for topology in HA_TOPOLOGIES]
    else:
        targets.append(
            Target(
                "gateway_w2",
                "gateway (2 workers)",
                GATEWAY_PATH,
                gw_callers,
                note="unavailable: `gateway serve` has no --workers option on this commit",
            )
        )
    return targets


def _passthrough_row(root: Path, config: Path, callers: list[tuple[str, str]]) -> Target:
    """The same gateway, its own process, measured on a pass-through route."""
    row = _gateway(root, config, 1, callers)
    row.key, row.label, row.path_template = (
        "gateway_passthrough",
        "gateway, pass-through route",
        PASSTHROUGH_PATH,
    )
    assert row.server is not None
    row.server.name, row.server.log_path = row.key, root / f"{row.key}.log"
    if not _supports_passthrough():
        row.note = "unavailable: no pass-through routes on this commit"
    return row


def _ha_gateway(root: Path, config: Path, callers: list[tuple[str, str]], topology: str) -> Target:
    """Two workers on a Redis Cluster or behind Sentinel, unless a program is missing."""
    absent = missing(topology)
    if absent:
        key, label = ROW_NAMES[(2, topology)]
        note = f"unavailable: {', '.join(absent)} missing (make test installs it)"
        return Target(key, label, GATEWAY_PATH, callers, note=note)
    return _gateway(root, config, 2, callers, redis=topology)


def _nginx(root: Path, stub_port: int, callers: list[tuple[str, str]], install: bool) -> Target:
    try:
        binary = ensure_nginx(install)
    except RuntimeError as exc:
        return Target("nginx", "nginx", STUB_PATH, callers, note=f"unavailable: {exc}")
    server = nginx_server(binary, root / "nginx", free_port(), stub_port)
    return Target("nginx", "nginx", STUB_PATH, callers, server)
