#!/usr/bin/env bash
# Installs what `sluice bench --instructions` (and its test) needs when it is missing: valgrind, and objcopy
# from binutils.
set -euo pipefail

if command -v valgrind >/dev/null 2>&1 && command -v objcopy >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-valgrind: valgrind or objcopy is missing and apt-get is not available; install valgrind and binutils" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-valgrind: installing valgrind and binutils" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends valgrind binutils >&2
