#!/usr/bin/env bash
# The benchmark in one command: installs nginx, HAProxy and a font for the
# plots (Debian packages), makes the release build of switchyard and the
# load generator, measures switchyard, nginx, HAProxy and the backend
# directly side by side, and writes BENCHMARKS.md, bench/plots/*.png and
# bench/results.json.
#
# The proxies run pinned to CPU 0, the load generator and backend to CPU 1.
# Extra arguments go to `loadgen suite` (e.g. --tunnels 500
# --changes 10 for a quick look). 13-13.5 minutes on 2 cores from scratch
# (Debian packages included): a release build of 6.5-7.5 and the
# measurement of about 6.
#
# With `--pgo` as the first argument it measures the profile-guided build
# of scripts/pgo.sh instead (which makes the load generator too). That build
# trains a new profile and builds everything twice on every run, 10-12
# minutes from scratch and 7.5 after a change, so the whole run takes
# 16-18: beyond the 15 minutes the benchmark is meant to fit in, which is
# why it is not the default.
set -euo pipefail
cd "$(dirname "$0")/.."
# The report holds the whole run, installing and building included, to the
# 15 minutes it must fit in.
started=$(date +%s)

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${1:-}" = --pgo ]; then
    shift
    scripts/pgo.sh
    bin=target/pgo
    build=(--build "profile-guided release build by scripts/pgo.sh, as is the load generator" --command "bench/run.sh --pgo")
else
    cargo build --release -p switchyard -p switchyard-bench
    bin=target/release
    build=(--build "release build, as is the load generator")
fi
pin=(taskset -c 1)
if [ "$(nproc)" -lt 2 ]; then
    echo "warning: fewer than 2 CPUs; the proxy and the load generator share one" >&2
    pin=()
fi
exec "${pin[@]}" "$bin/loadgen" suite --switchyard "$bin/switchyard" --proxy-cpu 0 \
    --started-at "$started" "${build[@]}" "$@"
