#!/usr/bin/env bash
# Soak: benches/soak.sh SECS (default 60). Builds the release binaries, then runs the mix in
# benches/soak.py against wsedge on both backends at once and audits descriptors, RSS and
# counters at the end. Exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
ulimit -n "$(ulimit -Hn)" || true
cargo build --release -q -p wsedge -p wsedge-loadgen
exec python3 benches/soak.py "$secs"
