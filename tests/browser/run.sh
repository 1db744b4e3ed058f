#!/usr/bin/env bash
# The browser end-to-end tests (console, SIP.js/JsSIP phones, WebRTC) in Debian's Chromium, driven
# by playwright-core under node's test runner. On a fresh Debian 12 machine it installs
# what is missing (chromium, sip-tester for SIPp, baresip-core, npm, openssl, the node modules with `npm ci`),
# then runs every tests/browser/*.test.mjs against target/debug/confero (or CONFERO_BIN).
# Fails when Node.js (20 or later) is absent: a suite that silently does not run proves
# nothing. Extra arguments go to `node --test` (e.g. --test-name-pattern=invite).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

log() { printf '== browser tests: %s\n' "$*"; }

if ! command -v node >/dev/null 2>&1; then
  log "Node.js 20 or later is needed for the browser tests and is not installed" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  log "Node.js $(node --version) is too old: playwright-core needs 20 or later" >&2
  exit 1
fi

missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v baresip >/dev/null 2>&1 || missing+=(baresip-core)   # webrtc/calls.test.mjs: desk phones that send a tone and record
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # phones.test.mjs: a self-signed certificate for wss://
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! $sudo true 2>/dev/null; then
    log "cannot install ${missing[*]} (not root, no sudo)" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# node_modules is stale when it was installed from another package-lock.json.
stamp="$here/node_modules/.confero-lock.sha256"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ ! -d "$here/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "npm ci"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi

export CONFERO_BIN="${CONFERO_BIN:-$root/target/debug/confero}"
if [ ! -x "$CONFERO_BIN" ]; then
  log "$CONFERO_BIN is missing: build it first (cargo build --bin confero); waiting for it up to 3 minutes" >&2
fi
export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$root/target/browser-screenshots}"
log "confero: $CONFERO_BIN; screenshots: $SCREENSHOT_DIR"

cd "$root"
status=0
# Chromium gathers ICE candidates on every interface of the machine: as root, run the
# tests (and so the PBX, the SIP peers and Chromium they start) in a network namespace
# with only loopback, so that all media stays on 127.0.0.1. Everything that needs the
# network (apt-get, npm ci) happened above, outside it. CONFERO_NETNS=0 skips it.
if [ "${CONFERO_NETNS:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 \
  && command -v ip >/dev/null 2>&1 && unshare --net sh -c 'ip link set lo up' 2>/dev/null; then
  log "running in a network namespace with only loopback (unshare --net)"
  unshare --net sh -c 'ip link set lo up && exec "$@"' sh \
    node --test --test-concurrency=1 "$@" tests/browser/*.test.mjs || status=$?
else
  if [ "${CONFERO_NETNS:-1}" = 0 ]; then
    why="CONFERO_NETNS=0"
  else
    why="needs root, unshare and ip, and the right to make one"
  fi
  log "not in a network namespace ($why): Chromium may gather candidates on every interface"
  node --test --test-concurrency=1 "$@" tests/browser/*.test.mjs || status=$?
fi
if [ "$status" -ne 0 ]; then
  log "FAILED (exit $status); screenshots, including FAILED-*.png, in $SCREENSHOT_DIR"
fi
exit "$status"
