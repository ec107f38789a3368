#!/usr/bin/env bash
# Fuzzes switchyard with cargo-fuzz (libFuzzer + AddressSanitizer), one
# target after the other, for a bounded time each.
#
#   scripts/fuzz.sh                    # every target, 60 s each
#   FUZZ_SECONDS=10 scripts/fuzz.sh    # every target, 10 s each
#   scripts/fuzz.sh matcher            # one target
#
# Targets (fuzz/fuzz_targets/):
#   manifest_loader  any bytes as a manifest file: parse, translate, look up
#   annotations      any annotation map: the typed policy and its warnings
#   translate        any cluster snapshot: translate, compile, look up
#   matcher          any rules and requests: the compiled table against a
#                    reference reading of the Ingress path and host rules
#   backend_response any bytes as a backend's answer: head parser and
#                    chunked decoder, one read against many
#   client_request   any bytes as a client's requests: the own HTTP/1
#                    server's head parser, one read against many; what it
#                    serves carries one plain Content-Length at most (its
#                    body is skipped), what it hands to hyper is left as
#                    it was
#
# What it does:
# - installs cargo-fuzz (`cargo install --locked cargo-fuzz`) if missing;
# - runs `cargo fuzz run --sanitizer address TARGET` with
#   RUSTC_BOOTSTRAP=1: cargo-fuzz passes `-Zsanitizer=address`, which stable
#   rustc accepts only with that variable (stable ships the sanitizer
#   runtimes; no nightly toolchain is needed). FUZZ_SANITIZER=none builds
#   without ASan (coverage instrumentation only, plain stable flags);
# - fuzzes in one process (no -jobs/-workers/-fork: libFuzzer's -jobs=1
#   would run a child process and hide its output in fuzz-0.log), reading
#   the committed seeds in fuzz/corpus/TARGET and writing new inputs to
#   fuzz/corpus-work/TARGET (ignored by git), with fuzz/dict/TARGET.dict;
# - with FUZZ_UPDATE_CORPUS=1, adds to fuzz/corpus/TARGET the fewest new
#   inputs that cover edges it does not (libFuzzer -set_cover_merge=1
#   -use_counters=0), for committing; keep fuzz/corpus to a few hundred KB;
# - a crash, panic, failed assertion, leak or timeout stops that target
#   (the input is saved under fuzz/artifacts/TARGET/, rerun it with
#   `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`);
#   the others still run, and the script exits 1 naming the failed ones.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(manifest_loader annotations translate matcher backend_response client_request)
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"

if [ $# -gt 1 ]; then
    echo "usage: $0 [TARGET]   (targets: ${all_targets[*]})" >&2
    exit 2
elif [ $# -eq 1 ]; then
    if [[ " ${all_targets[*]} " != *" $1 "* ]]; then
        echo "unknown target $1 (targets: ${all_targets[*]})" >&2
        exit 2
    fi
    targets=("$1")
else
    targets=("${all_targets[@]}")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
echo "fuzz: $(rustc --version), $(cargo fuzz --version), sanitizer $sanitizer, ${seconds}s per target"

failed=()
for target in "${targets[@]}"; do
    work="fuzz/corpus-work/$target"
    mkdir -p "$work" "fuzz/corpus/$target"
    args=(-max_total_time="$seconds" -timeout=20 -print_final_stats=1)
    if [ -f "fuzz/dict/$target.dict" ]; then
        args+=(-dict="fuzz/dict/$target.dict")
    fi
    echo "fuzz: $target for ${seconds}s"
    if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "$work" "fuzz/corpus/$target" -- "${args[@]}"; then
        failed+=("$target")
        continue
    fi
    if [ "${FUZZ_UPDATE_CORPUS:-0}" = 1 ]; then
        cargo fuzz run --sanitizer "$sanitizer" "$target" "fuzz/corpus/$target" "$work" -- \
            -set_cover_merge=1 -use_counters=0
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${targets[*]}: no crash"
