#!/usr/bin/env bash
# Head-to-head: wsedge against nginx (Lua), Node ws, Python websockets, tokio-tungstenite and
# the floor server, each storming from wsedge-loadgen. See benches/compare.py for options:
#   benches/compare.sh [--quick] [--out FILE] [--rounds N] [--secs S] [--plot FILE.svg]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benches/compare.py "$@"
