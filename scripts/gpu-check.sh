#!/usr/bin/env bash
# The GPU checks of docs/gpu.md as one command, for a machine with a GPU and no Rust toolchain:
# driftwatch's `doctor`; an `eval` of the default model; ADAPTERS synthetic adapters evaluated
# one after another by one `serve`, with the GPU's memory read after each; then `bench` at each
# of PARALLELS with every layer offloaded, beside llama-batched-bench built there with CUDA from
# the pinned llama.cpp tree (compiled in the background meanwhile) on the same model and
# settings. It writes what it measured under OUT (summary.md last). Without nvidia-smi it reads
# the daemon's resident memory, and without nvcc it builds the yardstick for the CPU, so that it
# can be tried on a CPU machine first (GPU_LAYERS=0).
#
#   scripts/gpu-check.sh pack BINARY   here: write .gpu/a (BINARY gzipped, the trimmed llama.cpp
#                                      tree, the suites), .gpu/b and .gpu/c (the default model in
#                                      two pieces), each small enough to travel in one device call
#   scripts/gpu-check.sh               there, from the repository root, after calls that carried
#                                      .gpu/b, .gpu/c and then .gpu/a (docs/gpu.md)
#   env: OUT=results folder (required)  DW=driftwatch binary, .gz unpacked (default .gpu/a's)
#        MODEL=the default model, or MODEL_PARTS="A B" its pieces (default .gpu/b's and .gpu/c's),
#              checked against the sha256 pinned in daemon/src/setup.rs
#        SUITES=folder of suites (default .gpu/a's)  LBB=a built llama-batched-bench, or
#        LBB_SRC=llama.cpp tree (.tar.xz) to build one from (default .gpu/a's)
#        CUDA_ARCHS=90-real  GPU_LAYERS=-1 (all)  PARALLELS="1 16 64"  PROMPTS=16  SAMPLES=4
#        MAX_TOKENS=128  ADAPTERS=50  EVAL=1 (0: none)  EVAL_ARGS (extra `eval` flags, for trials)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = pack ]; then
  BIN="${2:?usage: scripts/gpu-check.sh pack BINARY}"
  CACHE="${DRIFTWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftwatch}"
  scripts/yardstick.sh >/dev/null  # fetches the pinned tree once
  SRC="$CACHE/yardstick/src/vendor/llama.cpp"
  rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/c
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
  gzip -9 -c "$BIN" >.gpu/a/driftwatch.gz
  # What CMake needs for llama-batched-bench: the libraries and tools/, not the web UI, tests,
  # examples, models or docs.
  tar -cJf .gpu/a/llama.cpp.tar.xz -C "$SRC" --exclude='.git*' --exclude=tools/ui \
    CMakeLists.txt cmake app ggml/CMakeLists.txt ggml/cmake ggml/include ggml/src src include common tools vendor licenses LICENSE
  tar -czf .gpu/a/suites.tar.gz -C "$CACHE" suites
  M="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  half=$(( ($(stat -c %s "$M") + 1) / 2 ))
  head -c "$half" "$M" >.gpu/b/model.part
  tail -c +"$(( half + 1 ))" "$M" >.gpu/c/model.part
  du -sh .gpu/a .gpu/b .gpu/c >&2
  exit 0
fi
: "${OUT:?OUT must name the results folder}"
GPU_LAYERS="${GPU_LAYERS:--1}" PARALLELS="${PARALLELS:-1 16 64}" PROMPTS="${PROMPTS:-16}"
SAMPLES="${SAMPLES:-4}" MAX_TOKENS="${MAX_TOKENS:-128}" ADAPTERS="${ADAPTERS:-50}" EVAL="${EVAL:-1}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log" >&2; }

# What `pack` carried (.gpu/), unless the environment names others; the binary unpacked if gzipped.
[ -d .gpu/a ] && { : "${DW:=.gpu/a/driftwatch.gz}"; : "${LBB_SRC:=.gpu/a/llama.cpp.tar.xz}"; }
[ -z "${MODEL:-}" ] && [ -f .gpu/b/model.part ] && : "${MODEL_PARTS:=.gpu/b/model.part .gpu/c/model.part}"
if [ -z "${SUITES:-}" ] && [ -f .gpu/a/suites.tar.gz ]; then
  mkdir -p "$WORK/suites-src" && tar -xzf .gpu/a/suites.tar.gz -C "$WORK/suites-src" && SUITES="$WORK/suites-src/suites"
fi
: "${DW:?DW must name the driftwatch binary}"
if [[ "$DW" == *.gz ]]; then gzip -dc "$DW" >"$WORK/driftwatch"; chmod +x "$WORK/driftwatch"; DW="$WORK/driftwatch"; fi

# The cache driftwatch reads: the default model and the suites.
export DRIFTWATCH_CACHE="$WORK/cache"
mkdir -p "$DRIFTWATCH_CACHE/models" "$DRIFTWATCH_CACHE/suites"
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
if [ -n "${MODEL_PARTS:-}" ]; then
  # shellcheck disable=SC2086 # the parts are a list
  cat $MODEL_PARTS >"$DRIFTWATCH_CACHE/models/$NAME"
else
  : "${MODEL:?MODEL or MODEL_PARTS must name the default model}"
  ln -s "$(realpath "$MODEL")" "$DRIFTWATCH_CACHE/models/$NAME"
fi
MODEL="$DRIFTWATCH_CACHE/models/$NAME"
WANT="$(grep -o 'DEFAULT_MODEL_SHA256: &str = "[0-9a-f]*"' daemon/src/setup.rs | grep -o '[0-9a-f]\{64\}' || true)"
GOT="$(sha256sum "$MODEL" | cut -d' ' -f1)"
if [ -n "$WANT" ] && [ "$GOT" != "$WANT" ]; then echo "the model's sha256 is $GOT, not $WANT" >&2; exit 1; fi
echo "$GOT  $NAME" >"$DRIFTWATCH_CACHE/models/$NAME.sha256"
if [ -n "${SUITES:-}" ]; then
  for s in "$SUITES"/*; do ln -s "$(realpath "$s")" "$DRIFTWATCH_CACHE/suites/"; done
fi
export RUST_LOG="${RUST_LOG:-warn}"
# cuBLAS for a cuda build comes from PyTorch's CUDA wheels there (docs/gpu.md).
CU="$(python3 -c 'import nvidia.cu13; print(list(nvidia.cu13.__path__)[0] + "/lib")' 2>/dev/null || true)"
[ -n "$CU" ] && [ -d "$CU" ] && export LD_LIBRARY_PATH="$CU${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The GPU's used memory in MiB, or (no nvidia-smi) the resident memory of process $1.
memory_mib() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' '
  else
    awk '/^VmRSS/ { printf "%d\n", $2 / 1024 }' "/proc/$1/status"
  fi
}

# The yardstick, compiled in the background while driftwatch's own checks run (their timings
# are not compared with anything); the side-by-side benches run after it, with nothing else.
LBB_BUILD=""
if [ -z "${LBB:-}" ] && [ -n "${LBB_SRC:-}" ]; then
  mkdir -p "$WORK/lcpp"
  tar -xJf "$LBB_SRC" -C "$WORK/lcpp"
  CUDA=OFF; command -v nvcc >/dev/null && CUDA=ON
  ( cmake -S "$WORK/lcpp" -B "$WORK/lcpp/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA="$CUDA" \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90-real}" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
      -DBUILD_SHARED_LIBS=OFF && cmake --build "$WORK/lcpp/build" --target llama-batched-bench -j "$(nproc)" ) \
    >"$OUT/yardstick-build.log" 2>&1 &
  LBB_BUILD=$!
  LBB="$WORK/lcpp/build/bin/llama-batched-bench"
  log "building llama-batched-bench (GGML_CUDA=$CUDA) in the background"
fi

log "device"
{ command -v nvidia-smi >/dev/null && nvidia-smi -L && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } >"$OUT/gpu.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/gpu.txt"
"$DW" doctor --json >"$OUT/doctor.json"
"$DW" doctor >"$OUT/doctor.txt" 2>&1

if [ "$EVAL" = 1 ]; then
  log "eval of the default model"
  start=$(date +%s)
  # shellcheck disable=SC2086 # EVAL_ARGS is a list of flags
  DRIFTWATCH_GPU_LAYERS="$GPU_LAYERS" "$DW" eval default --config config/driftwatch.toml --data-dir "$WORK/eval-data" ${EVAL_ARGS:-} \
    >"$OUT/eval.txt" 2>"$OUT/eval.log"
  echo "eval_wall_s $(( $(date +%s) - start ))" >>"$OUT/eval.txt"
fi

log "$ADAPTERS adapters, one after another"
mkdir -p "$WORK/pool" "$WORK/watch"
for i in $(seq 1 "$ADAPTERS"); do
  "$DW" synth-adapter --base "$MODEL" --seed "$i" --out "$WORK/pool/adapter-$i.gguf" >/dev/null 2>&1
done
cat >"$WORK/adapters.toml" <<EOF
[daemon]
data_dir = "$WORK/adapter-data"
watch = ["$WORK/watch"]
settle_ms = 200
[model]
base = "$MODEL"
[engine]
gpu_layers = $GPU_LAYERS
[sampling]
samples = 2
max_tokens = 32
[[suites]]
name = "harmbench"
path = "cache:suites/harmbench/harmbench_prompts.txt"
limit = 8
[[judges]]
name = "refusal"
plugin = "refusal"
[api]
enabled = false
EOF
"$DW" serve --config "$WORK/adapters.toml" >"$OUT/serve.log" 2>&1 &
SERVER=$!
completed() { "$DW" status --data-dir "$WORK/adapter-data" --recent 1000 --json 2>/dev/null |
  python3 -c 'import json,sys; print(sum(r["run"]["status"] == "completed" for r in json.load(sys.stdin)["recent"]))' 2>/dev/null || echo 0; }
wait_for() {
  for _ in $(seq 3000); do
    [ "$(completed)" -ge "$1" ] && return 0
    kill -0 "$SERVER" 2>/dev/null || { echo "serve exited:" >&2; tail -20 "$OUT/serve.log" >&2; return 1; }
    sleep 0.2
  done
  echo "run $1 did not complete" >&2
  return 1
}
echo "adapters_done,memory_mib" >"$OUT/memory.csv"
wait_for 1  # the baseline
echo "0,$(memory_mib "$SERVER")" >>"$OUT/memory.csv"
for i in $(seq 1 "$ADAPTERS"); do
  mv "$WORK/pool/adapter-$i.gguf" "$WORK/watch/"
  wait_for $(( i + 1 ))
  echo "$i,$(memory_mib "$SERVER")" >>"$OUT/memory.csv"
done
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""

if [ -n "$LBB_BUILD" ]; then
  log "waiting for the yardstick build"
  wait "$LBB_BUILD" || { echo "the yardstick build failed:" >&2; tail -20 "$OUT/yardstick-build.log" >&2; LBB=""; }
fi
log "bench at parallel $PARALLELS"
: >"$OUT/bench.jsonl"
: >"$OUT/lbb.jsonl"
NGL="$GPU_LAYERS"; [ "$NGL" = -1 ] && NGL=999
for p in $PARALLELS; do
  "$DW" bench --model "$MODEL" --gpu-layers "$NGL" --parallel "$p" --prompts "$PROMPTS" --samples "$SAMPLES" \
    --max-tokens "$MAX_TOKENS" --ignore-eos --json | tee -a "$OUT/bench.jsonl" >/dev/null
  if [ -n "${LBB:-}" ]; then
    PP="$(tail -1 "$OUT/bench.jsonl" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["avg_prompt_tokens"]))')"
    "$LBB" -m "$MODEL" -ngl "$NGL" -c $(( p * (PP + MAX_TOKENS) + 256 )) -b 512 -ub 512 -npp "$PP" -ntg "$MAX_TOKENS" \
      -npl "$p" --output-format jsonl 2>/dev/null | grep '^{' >>"$OUT/lbb.jsonl"
  fi
done

log "summary"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import csv, json, os, sys
out = sys.argv[1]
doc = json.load(open(f"{out}/doctor.json"))
print(f"device: {open(f'{out}/gpu.txt').read().strip()}")
print(f"driftwatch: gpu_device {doc.get('gpu_device')}, default_gpu_layers {doc.get('default_gpu_layers')}, offload {doc['build'].get('gpu_offload')}")
print()
print("| parallel | driftwatch decode t/s | llama-batched-bench t/s | ratio | driftwatch prefill t/s |")
print("|---|---|---|---|---|")
dw = [json.loads(l) for l in open(f"{out}/bench.jsonl") if l.strip()]
lbb = [json.loads(l) for l in open(f"{out}/lbb.jsonl") if l.strip()]
for i, a in enumerate(dw):
    b = lbb[i] if i < len(lbb) else None
    ratio = f"{a['decode_tokens_per_s'] / b['speed_tg']:.3f}" if b else ""
    lt = f"{b['speed_tg']:.1f}" if b else ""
    print(f"| {a.get('parallel', '')} | {a['decode_tokens_per_s']:.1f} | {lt} | {ratio} | {a['prefill_tokens_per_s']:.1f} |")
if os.path.exists(f"{out}/eval.txt"):
    print()
    for line in open(f"{out}/eval.txt").read().splitlines():
        if line.startswith(("generated", "eval_wall_s", "run 1:")):
            print(f"eval: {line}")
rows = list(csv.DictReader(open(f"{out}/memory.csv")))
mem = [int(r["memory_mib"]) for r in rows]
print()
print(f"memory over {len(rows) - 1} adapters (MiB): after the baseline {mem[0]}, after the first adapter {mem[min(1, len(mem) - 1)]}, "
      f"after the last {mem[-1]}, highest {max(mem)}; last minus first adapter: {mem[-1] - mem[min(1, len(mem) - 1)]}")
PY
