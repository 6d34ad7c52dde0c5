#!/usr/bin/env bash
# Reconnect storms through the edge: N clients at once against an app server whose session
# setup costs CPU, straight to it, through wsedge, nginx and HAProxy, for two client retry
# policies; prints how long until every client is back against the app's floor, attempts
# per client and the app's wasted sessions. With --own: storms of the server's own
# handshakes (wsedge on both backends, the floors, nginx), its CPU capped (see
# benches/storm.py and benches/storm_own.py for the flags).
#
#   benches/storm.sh [--clients 8000] [--rounds 2] [--setup-ms 2] [--edge-args "..."]
#   benches/storm.sh --own [--tls] [--clients 10000] [--cap 20] [--rounds 2]
#
# Needs Python websockets in target/thirdparty/venv (.ci/run installs it), nginx and HAProxy;
# --own (the server's own handshakes, its CPU capped by a cgroup) needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wsedge -p wsedge-loadgen
if [ ! -x target/thirdparty/venv/bin/python ]; then
  python3 -m venv target/thirdparty/venv
fi
target/thirdparty/venv/bin/python -c 'import websockets' 2>/dev/null ||
  target/thirdparty/venv/bin/pip install -q 'websockets>=13,<18'
ulimit -n "$(ulimit -Hn)"
exec python3 benches/storm.py "$@"
