#!/usr/bin/env bash
# Debian's Chromium for the browser test: prints the path of the browser binary.
#
#   scripts/chromium.sh
#
# Installs Debian's chromium package with apt-get when the binary is missing (no browser is
# downloaded by the test tooling itself).
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    echo "chromium.sh: installing Debian's chromium package" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    else
        sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    fi
fi
command -v chromium
