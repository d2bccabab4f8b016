#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and the local stack: its own data directory, a loopback port,
# stopped by process id.
#
#   pg.sh start DIR [PORT]   initdb DIR/data if needed, start the server, create database "pbflags";
#                            prints the connection URL (also in DIR/url); PORT defaults to a free one
#                            (DIR/port remembers it, so a restart keeps the same URL)
#   pg.sh stop DIR           stop the server whose pid is in DIR/data/postmaster.pid
#
# PBFLAGS_PG_LISTEN=ADDR (start): also listen on ADDR and trust clients of its /24, e.g. the local
# Kubernetes node's bridge address, so pods reach the server (the URL printed stays on loopback).
# PBFLAGS_PG_TLS=1 (first start): serve TLS only (cleartext connections are rejected) with a
# certificate for localhost and 127.0.0.1 from a throwaway CA, DIR/tls/ca.crt; the URL printed then
# has sslmode=verify-full and sslrootcert=DIR/tls/ca.crt.
#
# Installs the Debian PostgreSQL server package if no server binaries are found. As root, the server
# runs as the "postgres" user (PostgreSQL refuses to run as root).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: pg.sh start|stop DIR [PORT]" >&2; exit 64; }

pgbin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ] || [ ! -x "$d/postgres" ]; then
    echo "pg.sh: installing the PostgreSQL server package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  echo "$d"
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  echo "pg.sh: no free port found" >&2; exit 1
}

case "$cmd" in
start)
  bin=$(pgbin)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" = 0 ]; then
    # The server user must reach the directory: open the path to it, own the directory.
    p=$dir; while [ "$p" != / ]; do chmod o+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done
    chown postgres: "$dir"
  fi
  port=${3:-$(cat "$dir/port" 2>/dev/null || free_port)}
  echo "$port" > "$dir/port"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U pbflags --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  if [ "${PBFLAGS_PG_TLS:-}" = 1 ] && [ ! -f "$dir/tls/ca.crt" ]; then
    mkdir -p "$dir/tls"
    test_certs "$dir/tls"
    chmod 0600 "$dir/tls/tls.key"
    chmod 0644 "$dir/tls/ca.crt"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir/tls"; fi
    printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$dir/tls/tls.crt" "$dir/tls/tls.key" \
      | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    # Reject cleartext TCP before any other rule matches.
    { echo "hostnossl all all all reject"; cat "$dir/data/pg_hba.conf"; } | as_owner tee "$dir/data/pg_hba.new" >/dev/null
    as_owner mv "$dir/data/pg_hba.new" "$dir/data/pg_hba.conf"
  fi
  listen=127.0.0.1
  if [ -n "${PBFLAGS_PG_LISTEN:-}" ]; then
    listen="127.0.0.1,$PBFLAGS_PG_LISTEN"
    hba="host all all ${PBFLAGS_PG_LISTEN%.*}.0/24 trust"
    grep -qxF "$hba" "$dir/data/pg_hba.conf" || echo "$hba" >>"$dir/data/pg_hba.conf"
  fi
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start \
    -o "-p $port -h $listen -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null \
    || { tail -n 20 "$dir/server.log" >&2; exit 1; }
  # Over the socket directory: local connections are not subject to the hostnossl rule.
  as_owner "$bin/psql" -h "$dir" -p "$port" -U pbflags -d postgres -qtAc \
    "SELECT 1 FROM pg_database WHERE datname = 'pbflags'" | grep -q 1 \
    || as_owner "$bin/createdb" -h "$dir" -p "$port" -U pbflags pbflags
  if [ -f "$dir/tls/ca.crt" ]; then
    url="postgres://pbflags@127.0.0.1:$port/pbflags?sslmode=verify-full&sslrootcert=$dir/tls/ca.crt"
  else
    url="postgres://pbflags@127.0.0.1:$port/pbflags?sslmode=disable"
  fi
  echo "$url" > "$dir/url"
  echo "$url"
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  pid=$(head -n 1 "$dir/data/postmaster.pid")
  # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
  kill -INT "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  ;;
*) echo "usage: pg.sh start|stop DIR [PORT]" >&2; exit 64 ;;
esac
