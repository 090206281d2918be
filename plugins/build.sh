#!/usr/bin/env sh
# Builds every bundled judge plugin into plugins/dist/<name>.wasm (WebAssembly components).
# Needs the wasm32-wasip2 target: rustup target add wasm32-wasip2
# Honours CARGO_TARGET_DIR (defaults to plugins/target).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! rustc --print sysroot >/dev/null 2>&1 || [ ! -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ]; then
    echo "error: the wasm32-wasip2 target is missing; run: rustup target add wasm32-wasip2" >&2
    exit 1
fi
target_dir=${CARGO_TARGET_DIR:-$here/target}
cargo build --manifest-path "$here/Cargo.toml" --target wasm32-wasip2 --release
mkdir -p "$here/dist"
for crate in refusal harm-rubric guard coherence; do
    file=$(echo "$crate" | tr - _)
    # -p keeps the build time, so an unchanged plugin does not look new to the daemon build
    # (which embeds plugins/dist) and rebuild it.
    cp -p "$target_dir/wasm32-wasip2/release/$file.wasm" "$here/dist/$crate.wasm"
    echo "built $here/dist/$crate.wasm"
done
