#!/usr/bin/env bash
# Prints a folder holding librdkafka 2.16's librdkafka.so.1, for running the test suite against a second
# librdkafka at run time (LD_LIBRARY_PATH): the one the confluent-kafka wheel on PyPI ships, ABI-compatible
# with the 2.0.2 headers Sluice builds against. Fetched once into .build/.
set -euo pipefail
cd "$(dirname "$0")/.."
version="2.16.1"
dir=".build/librdkafka-2.16"
if [ ! -f "$dir/librdkafka.so.1" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "librdkafka-2.16: installing pip" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2
    fi
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform "manylinux_2_28_$(uname -m)" -d "$download" "confluent-kafka==$version" >&2
    mkdir -p "$dir"
    python3 - "$download" "$dir" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/confluent_kafka-*.whl")[0]
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if n.startswith("confluent_kafka.libs/librdkafka")]
    if len(names) != 1:
        sys.exit("librdkafka-2.16: expected one librdkafka in %s, found %s" % (wheel, names))
    with archive.open(names[0]) as source, open(sys.argv[2] + "/librdkafka.so.1", "wb") as target:
        target.write(source.read())
PY
fi
echo "$PWD/$dir"
