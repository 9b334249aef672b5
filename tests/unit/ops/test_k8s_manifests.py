"""deploy/k8s: what the manifests promise, read from the manifests themselves.

``make test`` validates their schema (``k8s-check``); these tests check that they
fit the gateway: its settings load, its policy is the repository's, the grace
period covers the drain, probes, hardening and selectors agree.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.core.config import Settings
from app.workflows.saga import UNDO_ON_SHUTDOWN_SECONDS
from tests.conftest import POLICY_DIR, REPO

K8S = REPO / "deploy" / "k8s"
POD_LABELS = {"app.kubernetes.io/name": "authz-gateway", "app.kubernetes.io/component": "gateway"}


def manifest(name: str) -> dict[str, Any]:
    with (K8S / name).open() as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    return loaded


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod()["containers"]
    found: dict[str, Any] = only
    return found


def gateway_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("REDIS_URL", raising=False)
    raw = yaml.safe_load(manifest("configmap-config.yaml")["data"]["gateway.yaml"])
    return Settings(**raw)


def mount_of(volume: str) -> PurePosixPath:
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    assert "subPath" not in mounts[volume], "a subPath mount never sees ConfigMap updates"
    return PurePosixPath(mounts[volume]["mountPath"])


def test_kustomization_lists_every_manifest() -> None:
    listed = set(manifest("kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_config_map_is_valid_gateway_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = gateway_settings(monkeypatch)
    assert settings.redis.enabled  # several replicas: shared state is required
    assert PurePosixPath(str(settings.policy.dir)) == mount_of("policy")
    assert settings.policy.watch_interval > 0
    keys_file = PurePosixPath(str(settings.signing.keys_file))
    assert keys_file.parent == mount_of("keys")
    for service in settings.services.values():
        assert service.signing_key is not None
        assert PurePosixPath(str(service.signing_key.secret_file)).parent == mount_of("keys")


def test_the_policy_config_map_is_the_repository_policy() -> None:
    data = manifest("configmap-policy.yaml")["data"]
    files = [POLICY_DIR / "model.conf", POLICY_DIR / "policy.csv"]
    files += sorted((POLICY_DIR / "tests").glob("*.y*ml"))
    expected = {str(p.relative_to(POLICY_DIR)).replace("/", "."): p.read_text() for p in files}
    assert data == expected, "run scripts/k8s_policy_configmap.py (regenerates it from policies/)"
    volume = next(v for v in pod()["volumes"] if v["name"] == "policy")
    paths = {item["key"]: item["path"] for item in volume["configMap"]["items"]}
    assert paths == {key: key.replace("tests.", "tests/", 1) for key in expected}


def test_termination_grace_covers_the_pre_stop_pause_and_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drain = gateway_settings(monkeypatch).ops.graceful_shutdown_seconds
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    undo = UNDO_ON_SHUTDOWN_SECONDS  # closes cut short are undone before the pools close
    assert pod()["terminationGracePeriodSeconds"] > int(command[1]) + drain + undo


def test_probes_readiness_on_readyz_liveness_on_healthz() -> None:
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = container()["ports"][0]
    assert container()["livenessProbe"]["httpGet"]["port"] == port["name"]
    assert "--port" in container()["args"]
    assert container()["args"][container()["args"].index("--port") + 1] == str(
        port["containerPort"]
    )


def test_the_pod_runs_non_root_read_only_without_capabilities() -> None:
    assert pod()["securityContext"]["runAsNonRoot"] is True
    assert pod()["securityContext"]["runAsUser"] != 0
    assert pod()["automountServiceAccountToken"] is False
    hardened = container()["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"]["drop"] == ["ALL"]
    assert set(container()["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container()["resources"]["limits"]
    writable = {m["mountPath"] for m in container()["volumeMounts"] if not m.get("readOnly")}
    # A path inside the pod (an emptyDir), not a temporary file of this test.
    assert writable == {"/tmp"}, "only the emptyDir for metrics files is writable"  # noqa: S108


def test_keys_come_from_a_secret_mounted_as_files() -> None:
    volume = next(v for v in pod()["volumes"] if v["name"] == "keys")
    assert volume["secret"]["secretName"] == "authz-gateway-keys"
    assert volume["secret"]["defaultMode"] == 0o400
    assert not any(Path(K8S).glob("secret*.yaml")), "secrets are created from a secret store"


def test_service_hpa_pdb_and_network_policy_select_the_gateway_pods() -> None:
    labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert labels == POD_LABELS
    assert manifest("service.yaml")["spec"]["selector"] == POD_LABELS
    assert manifest("pdb.yaml")["spec"]["selector"]["matchLabels"] == POD_LABELS
    network = manifest("networkpolicy.yaml")["spec"]
    assert network["podSelector"]["matchLabels"] == POD_LABELS
    assert network["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = network["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": container()["ports"][0]["containerPort"]}]
    assert all("ipBlock" not in source for source in rule["from"]), "in-cluster sources only"
    hpa = manifest("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"]["name"] == manifest("deployment.yaml")["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert hpa["minReplicas"] > manifest("pdb.yaml")["spec"]["minAvailable"]


def _egress_ports(network: dict[str, Any]) -> set[tuple[str, int]]:
    return {
        (port["protocol"], port["port"]) for rule in network["egress"] for port in rule["ports"]
    }


def test_egress_reaches_what_the_settings_name_and_nothing_else() -> None:
    """DNS, every Redis node's port and every service's port; no address block."""
    network = manifest("networkpolicy.yaml")["spec"]
    settings = yaml.safe_load(manifest("configmap-config.yaml")["data"]["gateway.yaml"])
    needed = {("UDP", 53), ("TCP", 53)}
    needed |= {("TCP", int(node.rpartition(":")[2])) for node in settings["redis"]["nodes"]}
    needed.add(("TCP", 6379))  # the primary and replicas the Sentinels name
    for service in settings["services"].values():
        url = urlsplit(service["url"])
        needed.add(("TCP", url.port or (443 if url.scheme == "https" else 80)))
    assert _egress_ports(network) == needed
    for rule in network["egress"]:
        assert rule["to"], "every egress rule names its destinations"
        assert all("ipBlock" not in dest for dest in rule["to"]), "in-cluster destinations only"
