#!/usr/bin/env bash
# Prints a folder to put on PYTHONPATH for confluent-kafka (Confluent's Python client on librdkafka 2.16), the
# independent reader the exactly-once tests check Sluice's output with. Installed once into .build/ from PyPI's
# binary wheel; nothing is installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
version="2.16.1"
dir=".build/confluent-kafka-$version"
if [ ! -f "$dir/confluent_kafka/__init__.py" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "ensure-confluent-kafka: installing pip" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2
    fi
    rm -rf "$dir.part"
    python3 -m pip install --quiet --no-deps --only-binary=:all: --target "$dir.part" "confluent-kafka==$version" >&2
    rm -rf "$dir"
    mv "$dir.part" "$dir"
fi
echo "$PWD/$dir"
