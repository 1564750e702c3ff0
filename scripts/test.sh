#!/usr/bin/env bash
# Installs edgeloop with its test extras into .venv (compiling the native core), prepares the separate
# tritonclient virtualenv used by the compatibility test, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "edgeloop needs Python 3.11+"'

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ".[test]"

# tritonclient pins its own protobuf and ships its own `inference` proto, so it lives in its own venv
# and the compatibility test drives it as a subprocess.
if [ ! -x .ci-venv-tritonclient/bin/python ]; then
  "$PY" -m venv .ci-venv-tritonclient
fi
.ci-venv-tritonclient/bin/python -m pip install -q --upgrade pip
.ci-venv-tritonclient/bin/python -m pip install -q "tritonclient[grpc]" numpy
export EDGELOOP_TRITONCLIENT_PYTHON="$PWD/.ci-venv-tritonclient/bin/python"

exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
