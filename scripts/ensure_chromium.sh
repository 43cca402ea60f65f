#!/usr/bin/env bash
# The browser check needs Debian's headless Chromium (no browser download).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium is missing: install Debian's package 'chromium' (apt-get install chromium)" >&2
  exit 1
fi
echo "installing Debian's chromium for the browser check..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
command -v chromium
