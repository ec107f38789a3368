#!/usr/bin/env bash
# The benchmark in one command: installs nginx, HAProxy and a font for the
# plots (Debian packages), builds release binaries, measures switchyard,
# nginx, HAProxy and the backend directly side by side, and writes
# BENCHMARKS.md, bench/plots/*.png and bench/results.json.
#
# The proxies run pinned to CPU 0, the load generator and backend to CPU 1.
# Extra arguments go to `loadgen suite` (e.g. --tunnels 500
# --changes 10 for a quick look). With `--pgo` as the first argument it
# measures scripts/pgo.sh's profile-guided build of switchyard instead.
# Takes about 12 minutes on 2 cores.
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
# With --pgo first, the switchyard measured is scripts/pgo.sh's
# profile-guided build (two more release builds: about 19 minutes from
# scratch instead of 12, about 13 once they are cached).
binary=target/release/switchyard
build=(--build "release build")
if [ "${1:-}" = --pgo ]; then
    shift
    scripts/pgo.sh
    binary=target/pgo/switchyard
    build=(--build "profile-guided release build, scripts/pgo.sh" --command "bench/run.sh --pgo")
fi
pin=(taskset -c 1)
if [ "$(nproc)" -lt 2 ]; then
    echo "warning: fewer than 2 CPUs; the proxy and the load generator share one" >&2
    pin=()
fi
exec "${pin[@]}" target/release/loadgen suite --switchyard "$binary" --proxy-cpu 0 "${build[@]}" "$@"
