#!/usr/bin/env bash
# Install the Debian packages the test suite's real servers come from, when missing:
#   redis-server, redis-sentinel         Redis standalone, Sentinel and Cluster tests
#   nginx-light, libnginx-mod-http-js    nginx with njs in front of the gateway
# Tests start and stop their own servers on free loopback ports; nothing here starts
# a service. Runs apt-get (with sudo when not root). Where apt-get is missing, it
# stops with a message that says what to install by hand, not a package-manager error.
set -euo pipefail

# package -> a file that proves it is installed
declare -A PROBE=(
    [redis-server]=/usr/bin/redis-server
    [redis-sentinel]=/usr/bin/redis-sentinel
    [nginx-light]=/usr/sbin/nginx
    [libnginx-mod-http-js]=/usr/lib/nginx/modules/ngx_http_js_module.so
)
ORDER=(redis-server redis-sentinel nginx-light libnginx-mod-http-js)

missing=()
for pkg in "${ORDER[@]}"; do
    [ -e "${PROBE[$pkg]}" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    {
        echo "ensure-packages: apt-get is not available, and these test dependencies are missing:"
        for pkg in "${missing[@]}"; do echo "  $pkg (expected at ${PROBE[$pkg]})"; done
        echo "Install the same programs with this system's package manager, or run"
        echo "'make test' in a Debian-based environment (the project's Dockerfile is one)."
    } >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "ensure-packages: root or sudo is needed to install: ${missing[*]}" >&2
        exit 1
    fi
    SUDO="sudo"
fi
echo "ensure-packages: installing Debian packages: ${missing[*]}" >&2
$SUDO apt-get update -qq
# Package scripts must not start the services they ship (tests start their own).
printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
$SUDO chmod +x /usr/sbin/policy-rc.d
trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
for pkg in "${missing[@]}"; do
    if [ ! -e "${PROBE[$pkg]}" ]; then
        echo "ensure-packages: $pkg was installed but ${PROBE[$pkg]} is missing" >&2
        exit 1
    fi
done
