#!/usr/bin/env bash
# Prints a folder holding librdkafka 2.16's librdkafka.so.1, for running the test suite against a second
# librdkafka at run time (LD_LIBRARY_PATH): the one the confluent-kafka wheel on PyPI ships, ABI-compatible
# with the 2.0.2 headers Sluice builds against. Fetched once into .build/.
set -euo pipefail
cd "$(dirname "$0")/.."
version="2.16.1"
dir=".build/librdkafka-2.16"
if [ ! -f "$dir/librdkafka.so.1" ]; then
    scripts/wheel-file.sh "confluent-kafka==$version" "manylinux_2_28_$(uname -m)" "confluent_kafka.libs/librdkafka*" "$dir/librdkafka.so.1"
fi
echo "$PWD/$dir"
