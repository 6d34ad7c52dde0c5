#!/usr/bin/env bash
# A legitimate storm alone, then the same storm while 10,000 slowloris clients and a
# one-address flood hit the same server (wsedge with admission and per-address limits). Prints both rates, the ratio, and the server's
# RSS and descriptors under attack.
#
#   benches/storm_defense.sh [SECONDS]          # IO=epoll|uring|auto picks the backend,
#                                               # KEEP_LOG=FILE keeps the server's log
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
cargo build --release -q -p wsedge -p wsedge-loadgen
lg=target/release/wsedge-loadgen
log=$(mktemp)
taskset -c 0 target/release/wsedge serve --io "${IO:-auto}" --listen 127.0.0.1:0 --threads 1 --after close \
  --handshake-timeout-ms 60000 --max-pending-handshakes 12000 \
  --max-connections-per-ip 400 --max-handshakes-per-ip-per-sec 1000 --retry-after-secs 5-30 \
  >"$log" 2>&1 &
server=$!
pids=()
cleanup() { kill "$server" "${pids[@]}" 2>/dev/null || true; [ -n "${KEEP_LOG:-}" ] && cp "$log" "$KEEP_LOG"; rm -f "$log"; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [^ ,]*' "$log" | head -1 | cut -d' ' -f3)
url="ws://$addr/"

rate() { taskset -c 1 "$lg" storm "$url" --duration "${secs}s" --concurrency 64 --json 2>/dev/null | tail -1 |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f %d %s" % (d["upgrades_per_sec"], d["errors_total"], json.dumps(d["errors"], separators=(",", ":"))))'; }

read -r alone alone_errors alone_kinds < <(rate)
echo "legitimate storm alone:          $alone upgrades/s ($alone_errors errors: $alone_kinds)"

# 10,000 slowloris clients from their own addresses (40 per address, under the per-address
# limit), trickling a byte a second; and a flood of 5,000 handshakes a second from one
# address, five times its allowed rate. The attackers run on the server's core (CPU 0): the
# legitimate client keeps CPU 1 to itself, so what the ratio measures is the server's cost
# of fending them off, not two clients sharing a core.
taskset -c 0 "$lg" slowloris "$url" --connections 10000 --byte-interval 1s --duration "$((secs + 30))s" \
  --source-ips 127.1.0.2-127.1.0.254 >/dev/null 2>&1 &
pids+=($!)
taskset -c 0 "$lg" rate "$url" --rate 5000 --duration "$((secs + 30))s" --source-ips 127.2.0.1 \
  >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  fds=$(ls /proc/$server/fd | wc -l)
  [ "$fds" -ge 10000 ] && break
  sleep 0.2
done
cpu_before=$(awk '{print $14 + $15}' /proc/$server/stat)
read -r attacked attacked_errors attacked_kinds < <(rate)
cpu_after=$(awk '{print $14 + $15}' /proc/$server/stat)
fds=$(ls /proc/$server/fd | wc -l)
rss=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
echo "same storm under attack:         $attacked upgrades/s ($attacked_errors errors: $attacked_kinds)"
python3 -c "print(f'ratio:                           {$attacked / $alone:.2f}')"
echo "server under attack:             $fds descriptors, RSS $((rss / 1024)) MiB, CPU $(( (cpu_after - cpu_before) * 100 / $(getconf CLK_TCK) / secs ))% of a core"
