#!/usr/bin/env bash
# The benchmark in one command: installs nginx, HAProxy and a font for the
# plots (Debian packages), builds release binaries, measures switchyard,
# nginx, HAProxy and the backend directly side by side, and writes
# BENCHMARKS.md, bench/plots/*.png and bench/results.json.
#
# The proxies run pinned to CPU 0, the load generator and backend to CPU 1.
# Extra arguments go to `loadgen suite` (e.g. --tunnels 500
# --changes 10 for a quick look). Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release -p switchyard -p switchyard-bench
if [ "$(nproc)" -lt 2 ]; then
    echo "warning: fewer than 2 CPUs; the proxy and the load generator share one" >&2
    exec target/release/loadgen suite --switchyard target/release/switchyard --proxy-cpu 0 "$@"
fi
exec taskset -c 1 target/release/loadgen suite --switchyard target/release/switchyard --proxy-cpu 0 "$@"
