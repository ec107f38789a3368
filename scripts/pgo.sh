#!/usr/bin/env bash
# A profile-guided release build of switchyard, in target/pgo/switchyard,
# and of the benchmark's load generator beside it, in target/pgo/loadgen.
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
# instruction-cache misses in callgrind's model (see PERFORMANCE.md).
#
# The counts must be read by the LLVM that rustc is built on: the script
# installs `llvm-N` from Debian's packages for rustc's LLVM major version N
# when its `llvm-profdata-N` is missing. 10-12 minutes from scratch on
# 2 cores: an instrumented build of 5-6, a few seconds of load, a final
# build of 5-6; 7.5 after a change to switchyard. The final build is made
# whole every time: every crate lists the profile among its inputs, and
# each training run writes a new one. The two builds keep their own target
# directories under target/pgo, so that they do not undo the plain release
# build in target/release.
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
rm -rf "$dir/profiles"
mkdir -p "$dir/profiles"

# Both builds name the host as their target, so that RUSTFLAGS reach the
# code that runs and not the build scripts and procedural macros.
host=$(rustc -vV | sed -n 's/^host: //p')

# The instrumented build only has to count, not to be fast: it skips the
# link-time optimisation (dependencies compiled to machine code, not only
# to bitcode for the link), which took switchyard alone 8 minutes
# instrumented; switchyard and the load generator together now take
# about 5. It changes only RUSTFLAGS, never the release profile (codegen
# units, debug info, LTO as Cargo sees it), which goes into every crate's
# metadata hash and so into the names the profile is matched by.
# Functions are instrumented before link-time optimisation would run,
# where the final build reads their counts.
# The load generator is built instrumented beside it, so that the final
# build makes both from the same dependencies in one go; its counts go
# into the profile too, or the final build would take the code only it
# runs (tokio's multi-threaded scheduler) for cold.
RUSTFLAGS="-Cprofile-generate=$dir/profiles -Clinker-plugin-lto=no -Clto=off" \
    cargo build --release --target "$host" -p switchyard -p switchyard-bench \
    --target-dir "$dir/generate"
generated=$dir/generate/$host/release

# The proxy on CPU 0 and the load on CPU 1, as the benchmark runs them.
# LLVM_PROFILE_FILE names where the instrumented load generator writes
# (its backend is killed, and writes nothing); --profile-file where
# switchyard does.
pin=()
if [ "$(nproc)" -ge 2 ]; then pin=(taskset -c 1); fi
LLVM_PROFILE_FILE="$dir/profiles/generator-%p.profraw" \
    "${pin[@]}" "$generated/loadgen" train \
    --switchyard "$generated/switchyard" --proxy-cpu 0 \
    --profile-file "$dir/profiles/switchyard-%p.profraw"
if ! ls "$dir"/profiles/switchyard-*.profraw >/dev/null 2>&1; then
    echo "error: the instrumented switchyard wrote no profile under $dir/profiles" >&2
    exit 1
fi
"$profdata" merge -o "$dir/switchyard.profdata" "$dir/profiles"

RUSTFLAGS="-Cprofile-use=$dir/switchyard.profdata" \
    cargo build --release --target "$host" -p switchyard -p switchyard-bench \
    --target-dir "$dir/use"
cp "$dir/use/$host/release/switchyard" "$dir/use/$host/release/loadgen" "$dir/"
echo "wrote $dir/switchyard and $dir/loadgen"
