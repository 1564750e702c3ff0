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

# a throwaway PostgreSQL cluster (Unix socket only) for the store tests' second backend; stopped on exit
if [ -z "${EDGELOOP_POSTGRES_URL:-}" ]; then
  PGDIR=$(mktemp -d /tmp/edgeloop-pg-XXXXXX)
  if URL=$(bash scripts/postgres.sh start "$PGDIR" 2>"$PGDIR.err"); then
    export EDGELOOP_POSTGRES_URL="$URL"
    trap 'bash scripts/postgres.sh stop "$PGDIR"; rm -f "$PGDIR.err"' EXIT
  else
    export EDGELOOP_POSTGRES_SKIP="scripts/postgres.sh start failed: $(tail -c 300 "$PGDIR.err" | tr '\n' ' ')"
    echo "PostgreSQL tests will skip: $EDGELOOP_POSTGRES_SKIP" >&2
    rm -rf "$PGDIR" "$PGDIR.err"
  fi
fi

.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
