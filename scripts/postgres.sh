#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store tests: `start DIR` creates it in DIR, listening only on a
# Unix socket in DIR (no TCP), and prints its URL; `stop DIR` stops it and removes DIR.
# PostgreSQL refuses to run as root, so under root the cluster runs as the `postgres` user.
# `install` puts Debian's package in place (CI; needs root and apt).
set -euo pipefail

usage() { echo "usage: $0 start DIR | stop DIR | install" >&2; exit 2; }
[ $# -ge 1 ] || usage

if [ "$1" = install ]; then
  command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && exit 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends postgresql >/dev/null
  exit 0
fi
[ $# -eq 2 ] || usage
DIR=$2

bindir() {
  if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] || { echo "postgres.sh: no PostgreSQL server installed (pg_ctl not found)" >&2; exit 3; }
  echo "$found"
}

as_owner() {  # run a command as the cluster's owner
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$1" in
  start)
    BIN=$(bindir)
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || { echo "postgres.sh: running as root and no 'postgres' user" >&2; exit 3; }
      chown postgres "$DIR"
    fi
    # the socket path must stay under 107 bytes
    [ ${#DIR} -le 80 ] || { echo "postgres.sh: DIR too long for a Unix socket path: $DIR" >&2; exit 2; }
    as_owner "$BIN/initdb" -D "$DIR/data" -U edgeloop -A trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; exit 4; }
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 \
      -o "-k $DIR -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
-c max_connections=100 -c shared_buffers=32MB" start >/dev/null \
      || { cat "$DIR/server.log" >&2; exit 5; }
    echo "postgresql://edgeloop@/postgres?host=$DIR"
    ;;
  stop)
    [ -d "$DIR/data" ] || exit 0
    BIN=$(bindir)
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
    ;;
  *) usage ;;
esac
