#!/usr/bin/env bash
# Install redis-server (Debian package) when it is missing. Tests start and stop
# their own servers on free loopback ports; nothing here starts a service.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "ensure-redis: installing the redis-server Debian package" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
command -v redis-server >/dev/null
