#!/usr/bin/env bash
# Runs the store's tests against a throwaway PostgreSQL cluster on a free port
# under /tmp, then stops it. Needs PostgreSQL's server binaries (Debian:
# `apt-get install postgresql`); extra arguments go to `cargo test`.
#
#   bash crates/store/scripts/test-postgres.sh            # whole store suite
#   bash crates/store/scripts/test-postgres.sh postgres:: # only the PostgreSQL runs
set -euo pipefail

bindir=""
for d in /usr/lib/postgresql/*/bin /usr/local/bin /usr/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then bindir=$d; break; fi
done
[ -n "$bindir" ] || { echo "initdb/pg_ctl not found: apt-get install postgresql" >&2; exit 1; }

port=${CONFERO_PG_PORT:-$(( 40000 + RANDOM % 20000 ))}
dir=$(mktemp -d /tmp/confero-pg.XXXXXX)
# initdb refuses to run as root: use the postgres account when we are root.
run() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi

cleanup() { run "$bindir/pg_ctl -D $dir/data -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

run "$bindir/initdb -D $dir/data -U confero --auth=trust" >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log"; exit 1; }
run "$bindir/pg_ctl -D $dir/data -l $dir/server.log -w -o '-p $port -k $dir -c listen_addresses=127.0.0.1' start" >/dev/null \
    || { cat "$dir/server.log"; exit 1; }

export CONFERO_TEST_POSTGRES_URL="postgres://confero@127.0.0.1:$port/postgres"
cd "$(dirname "$0")/../../.."
cargo test -p confero-store "$@"
