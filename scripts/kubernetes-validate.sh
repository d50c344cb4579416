#!/usr/bin/env bash
# Prints the path of a kubernetes-validate executable (PyPI; it carries the Kubernetes schemas and works
# offline once installed), installed once into .build/ for the deploy-file tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=".build/kubernetes-validate"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        echo "kubernetes-validate: installing python3-venv" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet "kubernetes-validate==1.37.0" >&2
fi
echo "$PWD/$venv/bin/kubernetes-validate"
