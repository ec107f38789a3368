#!/usr/bin/env bash
# A profile-guided release build of switchyard, in target/pgo/switchyard.
#
#   scripts/pgo.sh
#
# Builds switchyard instrumented to count what its code does, runs it under
# each of the benchmark's loads for a second (`loadgen train`: keep-alive
# requests with 1 to 256 connections, request bodies, WebSocket sessions,
# tunnels, a burst of new connections), merges the counts with LLVM's
# `llvm-profdata` and builds it again with them. The compiler then lays the
# code a request runs out together and inlines by what runs most: per
# request about a fifth fewer instructions and a quarter as many
# instruction-cache misses in callgrind's model (see README, Performance).
#
# The counts must be read by the LLVM that rustc is built on: the script
# installs `llvm-N` from Debian's packages for rustc's LLVM major version N
# when its `llvm-profdata-N` is missing. Two release builds of about four
# minutes each and a few seconds of load on 2 cores; the instrumented and
# the final build keep their own target directories under target/pgo, so
# that they do not undo the plain release build in target/release.
set -euo pipefail
cd "$(dirname "$0")/.."

major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=llvm-profdata-$major
if ! command -v "$profdata" >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$major" >/dev/null || {
        echo "error: no llvm-$major here: $profdata must match rustc's LLVM $major to read its profiles" >&2
        exit 1
    }
fi

dir=$PWD/target/pgo
rm -rf "$dir/profiles" "$dir/build-profiles"
mkdir -p "$dir/profiles"

# The build scripts of dependencies are instrumented too and write their
# counts as they run; those go elsewhere and are not used.
RUSTFLAGS="-Cprofile-generate=$dir/build-profiles" \
    cargo build --release -p switchyard --target-dir "$dir/generate"
cargo build --release -p switchyard-bench

# The proxy on CPU 0 and the load on CPU 1, as the benchmark runs them.
# LLVM_PROFILE_FILE names where the instrumented switchyard writes.
pin=()
if [ "$(nproc)" -ge 2 ]; then pin=(taskset -c 1); fi
LLVM_PROFILE_FILE="$dir/profiles/switchyard-%p.profraw" \
    "${pin[@]}" target/release/loadgen train \
    --switchyard "$dir/generate/release/switchyard" --proxy-cpu 0
if ! ls "$dir"/profiles/*.profraw >/dev/null 2>&1; then
    echo "error: the instrumented switchyard wrote no profile under $dir/profiles" >&2
    exit 1
fi
"$profdata" merge -o "$dir/switchyard.profdata" "$dir/profiles"

RUSTFLAGS="-Cprofile-use=$dir/switchyard.profdata" \
    cargo build --release -p switchyard --target-dir "$dir/use"
cp "$dir/use/release/switchyard" "$dir/switchyard"
echo "wrote $dir/switchyard"
