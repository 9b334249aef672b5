"""Regenerate deploy/k8s/configmap-policy.yaml from policies/ (run after a policy change).

    .venv/bin/python scripts/k8s_policy_configmap.py

Writes the ConfigMap (model, policy and every suite, each a literal block) and
prints the ``items`` the Deployment's policy volume must list; the manifest test
(tests/unit/ops/test_k8s_manifests.py) fails while either is out of step.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POLICY_DIR = REPO / "policies"
OUT = REPO / "deploy" / "k8s" / "configmap-policy.yaml"
HEADER = """\
# The policy in force: policies/ of this repository (a test keeps them equal).
# Keys are flat; the Deployment maps tests.<suite>.yaml to tests/<suite>.yaml.
# Update it with `kubectl apply`: the kubelet swaps the mounted files atomically
# (..data symlink) within about a minute, and the gateway reloads through the gate
# (lint and suites first; a broken policy leaves the last good one in force).
# Regenerate with: .venv/bin/python scripts/k8s_policy_configmap.py
apiVersion: v1
kind: ConfigMap
metadata:
  name: authz-gateway-policy
data:
"""


def policy_files() -> list[Path]:
    files = [POLICY_DIR / "model.conf", POLICY_DIR / "policy.csv"]
    return files + sorted((POLICY_DIR / "tests").glob("*.y*ml"))


def key_of(path: Path) -> str:
    return str(path.relative_to(POLICY_DIR)).replace("/", ".")


def literal(text: str) -> str:
    """A YAML literal block (``|``) that reads back as exactly ``text``."""
    if not text.endswith("\n") or text.endswith("\n\n") or any(c in text for c in "\t\r"):
        raise SystemExit("a policy file must end in exactly one newline and hold no tab or CR")
    return "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())


def main() -> None:
    body = "".join(f"  {key_of(p)}: |\n{literal(p.read_text())}" for p in policy_files())
    OUT.write_text(HEADER + body)
    print(f"wrote {OUT.relative_to(REPO)}; the Deployment's policy volume lists:")
    for path in policy_files():
        key = key_of(path)
        print(f"  - {{key: {key}, path: {key.replace('tests.', 'tests/', 1)}}}")


if __name__ == "__main__":
    main()
