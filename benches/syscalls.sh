#!/usr/bin/env bash
# Syscalls per upgrade, counted by perf tracepoints while the storm client from
# benches/upgrade_storm.rs loads a server pinned to CPU 0.
#
#   benches/syscalls.sh [SECONDS] -- wsedge serve --after close [flags...]
#   benches/syscalls.sh 3 -- floor
#
# Needs perf (Debian: linux-perf) with tracepoint access (root).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
shift
[ "${1:-}" = "--" ] && shift
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 2; }

cargo build --release -q
cargo bench --bench upgrade_storm --no-run -q 2>/dev/null
bench=$(ls -t target/release/deps/upgrade_storm-* | grep -v '\.d$' | head -1)

log=$(mktemp)
if [ "${1:-}" = "floor" ]; then
  taskset -c 0 "$bench" --floor-server >"$log" 2>&1 &
else
  shift # "wsedge"
  taskset -c 0 target/release/wsedge "$@" --listen 127.0.0.1:0 --threads 1 >"$log" 2>&1 &
fi
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [^ ,]*' "$log" | head -1 | cut -d' ' -f3)

events=recvfrom,accept4,epoll_ctl,epoll_wait,sendto,close,read,write,shutdown,io_uring_enter
perf_events=$(printf 'syscalls:sys_enter_%s,' ${events//,/ })
counts=$(mktemp)
perf stat -x, -e "${perf_events%,}" -p "$server" -o "$counts" -- sleep "$((secs + 1))" &
perf_pid=$!
sleep 0.3
upgrades=$("$bench" --target "$addr" --secs "$secs" | awk '{print $1}')
wait $perf_pid
echo "upgrades: $upgrades"
awk -F, -v n="$upgrades" '/syscalls/ { split($3, e, "sys_enter_"); if ($1 > 0) printf "  %-11s %6.2f per upgrade\n", e[2], $1 / n; t += $1 }
  END { printf "  %-11s %6.2f per upgrade\n", "total", t / n }' "$counts"
rm -f "$counts"
