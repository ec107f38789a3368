#!/usr/bin/env bash
# Soak test: builds release binaries, then runs switchyard for SOAK_SECONDS
# (default 600) under mixed HTTP and tunnel load, manifest rewrites every
# 3 s, a backend killed and restarted every 20 s and clients resetting their
# connections. Samples RSS, open descriptors and metrics every 5 s into
# bench/soak.csv and bench/soak.png; exits non-zero if, after the warm-up,
# RSS or descriptors grow beyond their bounds or a request or tunnel to the
# backend that stayed up failed. Loopback only.
#
#   scripts/soak.sh                    # 10 minutes
#   SOAK_SECONDS=60 scripts/soak.sh    # a short run
#
# SOAK_WARMUP (seconds, default a quarter of the run, at most 60),
# SOAK_CSV and SOAK_PNG override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${SOAK_SECONDS:-600}"
case "$seconds" in
  '' | *[!0-9]*) echo "SOAK_SECONDS must be a whole number of seconds" >&2; exit 2 ;;
esac
if [ "$seconds" -lt 20 ]; then
  echo "SOAK_SECONDS must be at least 20 (warm-up and a few samples)" >&2
  exit 2
fi

cargo build --release -p switchyard -p switchyard-bench

args=(soak --switchyard target/release/switchyard --seconds "$seconds"
  --csv "${SOAK_CSV:-bench/soak.csv}" --png "${SOAK_PNG:-bench/soak.png}")
if [ -n "${SOAK_WARMUP:-}" ]; then
  args+=(--warmup "$SOAK_WARMUP")
fi

# loadgen starts the backends and switchyard itself, and they die with it
# (PR_SET_PDEATHSIG). The trap ends loadgen on Ctrl-C, TERM or any exit.
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A hard stop well past the planned length, so that a hang cannot run on.
timeout --signal=TERM --kill-after=10 "$((seconds + 120))" \
  target/release/loadgen "${args[@]}" &
pid=$!
status=0
wait "$pid" || status=$?
pid=
if [ "$status" -ne 0 ]; then
  echo "soak: FAILED (exit $status); see the messages above and ${SOAK_CSV:-bench/soak.csv}" >&2
fi
exit "$status"
