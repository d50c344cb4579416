#!/usr/bin/env bash
# Installs Debian's chromium when missing: the dashboard's tests open its pages in a real headless browser.
set -euo pipefail

for browser in chromium chromium-browser google-chrome; do
    command -v "$browser" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no chromium and no apt-get; install chromium (the dashboard's browser tests need it)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-chromium: installing chromium for the dashboard's browser tests" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
