#!/usr/bin/env bash
# Install the Debian packages the test suite's real servers come from, when missing:
#   redis-server, redis-sentinel         Redis standalone, Sentinel and Cluster tests
#   nginx-light, libnginx-mod-http-js    nginx with njs in front of the gateway
#   prometheus                           promtool, for deploy/prometheus's rule tests
# Tests start and stop their own servers on free loopback ports; nothing here starts
# a service. Runs apt-get (with sudo when not root). Where apt-get is missing, or
# cannot install, it stops with a message that says what to install by hand, not
# only a package-manager error.
# ENSURE_PACKAGES_PROBE_ROOT (for the script's own test) looks for the probe files
# under another root directory instead of /.
set -euo pipefail

# package -> a file that proves it is installed
declare -A PROBE=(
    [redis-server]=/usr/bin/redis-server
    [redis-sentinel]=/usr/bin/redis-sentinel
    [nginx-light]=/usr/sbin/nginx
    [libnginx-mod-http-js]=/usr/lib/nginx/modules/ngx_http_js_module.so
    [prometheus]=/usr/bin/promtool
)
ORDER=(redis-server redis-sentinel nginx-light libnginx-mod-http-js prometheus)

ROOT="${ENSURE_PACKAGES_PROBE_ROOT:-}"
missing=()
for pkg in "${ORDER[@]}"; do
    [ -e "$ROOT${PROBE[$pkg]}" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

# What to do by hand, after the reason ($1) apt-get cannot do it here.
by_hand() {
    {
        echo "ensure-packages: $1; these test dependencies are missing:"
        for pkg in "${missing[@]}"; do echo "  $pkg (expected at ${PROBE[$pkg]})"; done
        echo "Install the same programs with this system's package manager (Redis with"
        echo "redis-sentinel, nginx with the njs module, Prometheus's promtool), or run"
        echo "'make test' in a Debian-based environment, e.g. a python:3.11 container."
    } >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || by_hand "apt-get is not available"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || by_hand "apt-get needs root, and sudo is not available"
    SUDO="sudo"
fi
echo "ensure-packages: installing Debian packages: ${missing[*]}" >&2
$SUDO apt-get update -qq || by_hand "apt-get update failed (its error is above)"
# Package scripts must not start the services they ship (tests start their own). A
# policy-rc.d already there (Debian container images ship one) is left as it is.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || by_hand "apt-get install failed (its error is above)"
for pkg in "${missing[@]}"; do
    if [ ! -e "$ROOT${PROBE[$pkg]}" ]; then
        echo "ensure-packages: $pkg was installed but ${PROBE[$pkg]} is missing" >&2
        exit 1
    fi
done
