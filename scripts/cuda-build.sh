#!/usr/bin/env bash
# Builds driftwatch with llama.cpp's CUDA backend (`--features cuda`, release) on a machine with
# no GPU and no CUDA install, for a GPU machine that has the CUDA 13 runtime libraries but no Rust
# toolchain (docs/gpu.md). Not part of CI.
#
#   scripts/cuda-build.sh       prints the path of the stripped release binary
#   env: CUDA_ARCHS=90-real     the GPU architectures to compile for (90: Hopper); one keeps the
#                               build short, and machine code only (no PTX) needs no JIT there
#        RUST_CPU=x86-64-v3     the CPU the binary may assume (the GPU host is another machine:
#                               -C target-cpu=native could use instructions it lacks)
#
# The CUDA 13.0 toolkit (nvcc, headers, cudart, cuBLAS) comes from NVIDIA's Python wheels,
# unpacked once into the cache; 13.0 matches the R580 driver of the GPU machines here. The
# binary links cuBLAS dynamically (libcublas.so.13, libcublasLt.so.13: the GPU machine's, e.g.
# PyTorch's nvidia/cu13/lib, on LD_LIBRARY_PATH), the CUDA runtime statically, and the driver
# (libcuda.so.1) dynamically, through a stub made here from cuda.h's function names: the real
# driver is on the GPU machine. llama-cpp-sys-2 asks for cuBLAS' static archives and culibos,
# which the wheels do not ship; empty archives stand in for them and cuBLAS' shared libraries are
# linked instead.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DRIFTWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftwatch}"
CUDA_ARCHS="${CUDA_ARCHS:-90-real}"
RUST_CPU="${RUST_CPU:-x86-64-v3}"
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14)
TK="$CACHE/cuda/13.0"

if [ ! -x "$TK/bin/nvcc" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps -d "$tmp/wheels" "${WHEELS[@]}" >&2
  # Unzip keeping the executable bits (zipfile's extractall drops them).
  python3 - "$tmp/wheels" "$tmp/root" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1:]
for w in sorted(os.listdir(src)):
    with zipfile.ZipFile(os.path.join(src, w)) as z:
        for info in z.infolist():
            path = z.extract(info, dst)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(path, mode & 0o777)
PY
  [ -x "$tmp/root/nvidia/cu13/bin/nvcc" ] || { echo "the nvcc wheel has no nvidia/cu13/bin/nvcc" >&2; exit 1; }
  mkdir -p "$(dirname "$TK")"
  rm -rf "$TK"
  mv "$tmp/root/nvidia/cu13" "$TK"
fi

# What the link needs beside the toolkit: unversioned names for FindCUDAToolkit and -l, the
# driver stub, the empty archives. find_cuda_helper (llama-cpp-sys-2) searches
# $CUDA_LIBRARY_PATH/lib64 and lib64/stubs.
lib="$TK/lib"
for so in cudart cublas cublasLt; do
  [ -e "$lib/lib$so.so" ] || ln -s "lib$so.so.13" "$lib/lib$so.so"
done
[ -e "$TK/lib64" ] || ln -s lib "$TK/lib64"
mkdir -p "$lib/stubs"
if [ ! -f "$lib/stubs/libcuda.so" ]; then
  python3 - "$TK/include/cuda.h" "$lib/stubs/cuda-stub.c" <<'PY'
import re, sys
h = open(sys.argv[1]).read()
names = set(re.findall(r"\bCUresult\s+CUDAAPI\s+(cu[A-Za-z0-9_]+)\s*\(", h))
# Versioned entry points (`#define cuMemAlloc cuMemAlloc_v2`) are the symbols objects refer to.
names |= set(re.findall(r"#define\s+cu[A-Za-z0-9_]+\s+(cu[A-Za-z0-9_]+_v[0-9]+)\b", h))
with open(sys.argv[2], "w") as f:
    f.write("/* Link-time stub of the CUDA driver API: the real libcuda.so.1 is the GPU machine's. */\n")
    for n in sorted(names):
        f.write(f"int {n}(void) {{ return 999; }}\n")
PY
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/stubs/libcuda.so" "$lib/stubs/cuda-stub.c"
fi
mkdir -p "$TK/driftwatch-empty"
for a in cublas_static cublasLt_static culibos; do
  [ -f "$TK/driftwatch-empty/lib$a.a" ] || ar rcs "$TK/driftwatch-empty/lib$a.a"
done

export PATH="$TK/bin:$PATH"
export CUDA_LIBRARY_PATH="$TK"
export CUDAToolkit_ROOT="$TK"
export CMAKE_CUDA_COMPILER="$TK/bin/nvcc"
export CMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
# RUSTFLAGS replaces .cargo/config.toml's rustflags (target-cpu=native); its [env] (no AMX, no
# llamafile kernels on) still applies.
export RUSTFLAGS="-C target-cpu=$RUST_CPU -L native=$TK/driftwatch-empty -L native=$lib -L native=$lib/stubs \
-C link-arg=-lcublas -C link-arg=-lcublasLt"
# llama-cpp-sys-2's build script does not rerun when the architectures change: clean it then.
ARCHS_STAMP="$CARGO_TARGET_DIR/cuda-archs"
if [ -f "$ARCHS_STAMP" ] && [ "$(cat "$ARCHS_STAMP")" != "$CUDA_ARCHS" ]; then
  cargo clean --release -p llama-cpp-sys-2 >&2
fi
cargo build --release --features cuda -p driftwatch >&2
mkdir -p "$CARGO_TARGET_DIR"
echo "$CUDA_ARCHS" >"$ARCHS_STAMP"
BIN="$CARGO_TARGET_DIR/release/driftwatch"
strip "$BIN"
# About 79 MB stripped, most of it the GPU kernels; gzipped (about 35 MB) it fits what travels
# to a GPU machine (64 MiB).
gzip -c -6 "$BIN" >"$BIN.gz"
echo "$BIN"
