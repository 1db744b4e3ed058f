#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with the Rust toolchain and gcc.
# Installs the third-party test peers when missing (SIPp as Debian's sip-tester, baresip,
# PostgreSQL for the store tests, SIPVicious from PyPI for the attack tests; Chromium and the
# node modules for the browser tests),
# starts a throw-away PostgreSQL on a free loopback port, then runs every test of the
# workspace, the browser end-to-end tests (tests/browser) and a short fuzzing run of every
# fuzz target (scripts/fuzz.sh; CONFERO_SKIP_BROWSER and CONFERO_SKIP_FUZZ skip those).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*"; }

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v baresip >/dev/null 2>&1 || missing+=(baresip-core)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
pg_bin=""
for d in $(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)") /usr/lib/postgresql/*/bin; do
  if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then pg_bin=$d; break; fi
done
[ -n "$pg_bin" ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing test peers: ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if $sudo true 2>/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "cannot install ${missing[*]} (not root, no sudo): the tests needing them will say so"
  fi
  for d in /usr/lib/postgresql/*/bin; do
    if [ -z "$pg_bin" ] && [ -x "$d/initdb" ]; then pg_bin=$d; fi
  done
fi

# SIPVicious (svcrack, the password guesser attackers use) from PyPI, in a venv of its own.
if ! command -v sipvicious_svcrack >/dev/null 2>&1; then
  venv=target/test-tools/sipvicious
  if [ ! -x "$venv/bin/sipvicious_svcrack" ]; then
    log "installing sipvicious (PyPI) in $venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q sipvicious ||
      log "cannot install sipvicious: the tests needing it will say so"
  fi
  export PATH="$PWD/$venv/bin:$PATH"
fi

pg_dir=""
cleanup() {
  if [ -n "$pg_dir" ] && [ -d "$pg_dir" ]; then
    run_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
}
trap cleanup EXIT

# PostgreSQL refuses to run as root: use its own account when we are root.
run_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$pg_user" -- "$@"
  else
    "$@"
  fi
}

if [ -n "$pg_bin" ] && [ -z "${CONFERO_TEST_POSTGRES_URL:-}" ]; then
  pg_user=postgres
  if [ "$(id -u)" = 0 ] && ! id "$pg_user" >/dev/null 2>&1; then pg_user=nobody; fi
  pg_dir=$(mktemp -d /tmp/confero-pg.XXXXXX)
  chmod 755 "$pg_dir"
  [ "$(id -u)" = 0 ] && chown "$pg_user" "$pg_dir"
  pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if run_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust >"$pg_dir/initdb.log" 2>&1 &&
     run_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
       -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off" start >/dev/null; then
    export CONFERO_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
    log "PostgreSQL for the store tests on 127.0.0.1:$pg_port"
  else
    log "PostgreSQL could not start (see $pg_dir); its tests will be skipped with a reason"
    cat "$pg_dir/initdb.log" "$pg_dir/server.log" 2>/dev/null | tail -5 || true
  fi
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 4 "$@" || status=$?
  cargo test --workspace --doc --quiet || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

# The browser end-to-end tests drive the debug binary the Rust tests just built.
if [ -z "${CONFERO_SKIP_BROWSER:-}" ]; then
  log "browser tests (Chromium, playwright-core)"
  cargo build --quiet --bin confero
  ./tests/browser/run.sh || status=$?
fi
# Coverage-guided fuzzing of the parsers strangers reach: replay the seeds, then a short run.
if [ -z "${CONFERO_SKIP_FUZZ:-}" ]; then
  log "fuzzing (cargo-fuzz, stable toolchain)"
  ./scripts/fuzz.sh || status=$?
fi
exit "$status"
