#!/usr/bin/env bash
# Installs what building Sluice needs when it is missing: librdkafka-dev (with rdkafka_mock.h), pkg-config,
# and libsqlite3-dev for the OrderService example.
set -euo pipefail

have_librdkafka() {
    command -v pkg-config >/dev/null 2>&1 \
        && pkg-config --exists rdkafka \
        && [ -f "$(pkg-config --variable=includedir rdkafka)/librdkafka/rdkafka_mock.h" ] \
        && pkg-config --exists sqlite3
}

if have_librdkafka; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-deps: librdkafka-dev, libsqlite3-dev or pkg-config is missing and apt-get is not available;" >&2
    echo "ensure-deps: install librdkafka (with rdkafka_mock.h) and pkg-config, then retry." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-deps: installing librdkafka-dev, libsqlite3-dev and pkg-config" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq librdkafka-dev libsqlite3-dev pkg-config >&2
have_librdkafka || { echo "ensure-deps: librdkafka still not found after install" >&2; exit 1; }
