#!/usr/bin/env bash
# Fuzzing with cargo fuzz (libFuzzer) over the parsers outside input reaches; the targets are in
# tests/fuzz/fuzz_targets, thin wrappers over driftwatch::fuzzing, and their corpus is kept in
# tests/fuzz/corpus/<target>.
#
#   scripts/fuzz.sh smoke [SECONDS]          every target for SECONDS (default 5): `make test` runs it
#   scripts/fuzz.sh run SECONDS [TARGET...]  a campaign: each target (default all) for SECONDS,
#                                            new inputs added to its corpus; the last line of
#                                            each log says how many executions ran
#   scripts/fuzz.sh cmin [TARGET...]         shrink the corpus to the inputs that add coverage
#
# It builds on the stable toolchain without a sanitizer (`-s none`: Rust code is memory-safe, and
# what is looked for is panics, overflows, hangs and runaway allocations), with debug assertions
# and overflow checks on. The first build takes about 18 minutes on 2 cores (llama.cpp and
# wasmtime are compiled again, instrumented); later ones are incremental. A crash leaves its input
# in tests/fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(gguf config suite samples stream_query)
DIR=tests/fuzz

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
fi

fuzz() { cargo fuzz "$1" --fuzz-dir "$DIR" -s none "${@:2}"; }

mode=${1:-smoke}
shift || true
case "$mode" in
smoke)
    seconds=${1:-5}
    fuzz build
    for t in "${TARGETS[@]}"; do
        echo "fuzz: $t for ${seconds}s" >&2
        # A scratch copy of the corpus: the smoke run does not grow the kept one.
        scratch=$(mktemp -d)
        cp -r "$DIR/corpus/$t/." "$scratch/"
        status=0
        fuzz run "$t" "$scratch" -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
            >"$scratch.log" 2>&1 || status=$?
        grep -E "stat::number_of_executed_units|ERROR|panicked|SUMMARY|Done" "$scratch.log" >&2 || true
        rm -rf "$scratch" "$scratch.log"
        [ "$status" -eq 0 ] || { echo "fuzz: $t failed (its input is in $DIR/artifacts/$t)" >&2; exit 1; }
    done
    ;;
run)
    seconds=${1:?usage: scripts/fuzz.sh run SECONDS [TARGET...]}
    shift
    [ $# -gt 0 ] || set -- "${TARGETS[@]}"
    fuzz build
    mkdir -p "$DIR/logs"
    for t in "$@"; do
        echo "fuzz: $t for ${seconds}s (log: $DIR/logs/$t.log)" >&2
        fuzz run "$t" -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$DIR/logs/$t.log" 2>&1 ||
            { echo "fuzz: $t failed; see $DIR/logs/$t.log and $DIR/artifacts/$t" >&2; exit 1; }
        grep -E "stat::number_of_executed_units" "$DIR/logs/$t.log" | sed "s/^/fuzz: $t /" >&2
    done
    ;;
cmin)
    [ $# -gt 0 ] || set -- "${TARGETS[@]}"
    for t in "$@"; do fuzz cmin "$t"; done
    ;;
*)
    echo "usage: scripts/fuzz.sh smoke [SECONDS] | run SECONDS [TARGET...] | cmin [TARGET...]" >&2
    exit 2
    ;;
esac
