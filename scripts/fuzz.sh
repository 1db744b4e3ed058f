#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser a stranger reaches (SIP messages and stream
# framing, SDP, RTP/RTCP and the receive pipeline, STUN/DTLS through str0m, digest
# headers, the overload path's raw reader, the REST API's JSON), on the stable toolchain:
# cargo-fuzz with libFuzzer and no sanitizer. Installs cargo-fuzz when missing.
#
# Each target first replays its committed seeds (fuzz/seeds/TARGET, findings kept there
# as regression inputs), then runs FUZZ_SECONDS (default 15) on a scratch corpus. A crash
# fails the script; libFuzzer leaves the input in fuzz/artifacts/TARGET/.
#
# Usage: scripts/fuzz.sh [TARGET...]        (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== fuzz: %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi

seconds=${FUZZ_SECONDS:-15}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

log "building ${targets[*]}"
(cd fuzz && cargo fuzz build -s none >/dev/null 2>&1) || (cd fuzz && cargo fuzz build -s none)

scratch=$(mktemp -d /tmp/confero-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  if (cd fuzz && cargo fuzz run "$t" -s none "$scratch/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"$scratch/$t.log" 2>&1); then
    runs=$(grep -m1 '^stat::number_of_executed_units' "$scratch/$t.log" | awk '{print $2}')
    log "$t: ${runs:-?} inputs in ${seconds} s, no failure"
    passed=$((passed + 1))
  else
    log "$t FAILED:"
    tail -40 "$scratch/$t.log"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
