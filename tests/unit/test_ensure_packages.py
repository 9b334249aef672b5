"""scripts/ensure-packages.sh where apt-get is missing: a clear list, not a package-manager error.

Runs the script with a PATH that holds no apt-get and its probes under a temporary
root (``ENSURE_PACKAGES_PROBE_ROOT``), so nothing on the real system is read or changed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "ensure-packages.sh"
PROBES = {
    "redis-server": "usr/bin/redis-server",
    "redis-sentinel": "usr/bin/redis-sentinel",
    "nginx-light": "usr/sbin/nginx",
    "libnginx-mod-http-js": "usr/lib/nginx/modules/ngx_http_js_module.so",
    "prometheus": "usr/bin/promtool",
}


def run_script(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    empty_path = tmp_path / "bin"  # no apt-get, no sudo: nothing to install with
    empty_path.mkdir(exist_ok=True)
    env = {"PATH": str(empty_path), "ENSURE_PACKAGES_PROBE_ROOT": str(tmp_path / "root")}
    return subprocess.run(
        [bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_without_apt_get_it_names_what_is_missing_and_fails(tmp_path: Path) -> None:
    present = tmp_path / "root" / PROBES["redis-server"]
    present.parent.mkdir(parents=True)
    present.touch()
    done = run_script(tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "apt-get is not available" in done.stderr
    listed = [line.split()[0] for line in done.stderr.splitlines() if line.startswith("  ")]
    assert listed == ["redis-sentinel", "nginx-light", "libnginx-mod-http-js", "prometheus"]
    assert "package manager" in done.stderr


def test_with_everything_present_it_needs_no_apt_get(tmp_path: Path) -> None:
    for probe in PROBES.values():
        path = tmp_path / "root" / probe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    done = run_script(tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
