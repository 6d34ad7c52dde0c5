#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds (default 30) on the seeds in fuzz/seeds and the
# corpus it grows in fuzz/corpus (not committed). Needs the nightly toolchain and cargo-fuzz;
# prints one line per target: executions and whether it found anything.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
targets=(handshake echo upstream_answer proxy_v2 proxy_header config client_check takeover_greeting tls_records http2)
cargo +nightly fuzz build -O "${targets[@]}" >/dev/null 2>&1 || cargo +nightly fuzz build -O
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz $target: ${runs:-?} executions in ${secs}s, nothing found"
    rm -f "$log"
  else
    echo "fuzz $target: FAILED (crash or invariant broken); the input is in fuzz/artifacts/$target"
    tail -40 "$log"
    rm -f "$log"
    exit 1
  fi
done
