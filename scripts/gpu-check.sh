#!/usr/bin/env bash
# The GPU checks of docs/gpu.md, prepared for a lent GPU machine (no Rust toolchain there):
# driftwatch's `doctor`; an `eval` of the default model; ADAPTERS synthetic adapters evaluated
# one after another by one `serve`, with the GPU's memory read after each; then `bench` at each
# of PARALLELS with every layer offloaded, beside llama-batched-bench built there with CUDA from
# the pinned llama.cpp tree, on the same model, threads and settings. Without nvidia-smi it reads
# the daemon's resident memory, and without nvcc it builds the yardstick for the CPU, so that it
# can be tried on a CPU machine first (GPU_LAYERS=0).
#
#   scripts/gpu-check.sh pack BINARY  here: .gpu/a (BINARY gzipped, the trimmed llama.cpp tree,
#                                     the suites), .gpu/b and .gpu/c (the default model in two
#                                     pieces), each small enough to travel in one device call
#   scripts/gpu-check.sh start        there, call 1 (carrying .gpu/a): checks that the binary
#                                     starts and sees the GPU, and starts the yardstick's build
#                                     in its own session (it goes on between calls)
#   scripts/gpu-check.sh              there, call 3 (after .gpu/b and .gpu/c): the checks. The
#                                     results come back as two files in $OUT: summary.md and
#                                     results.tar.gz (the device returns at most 8 files)
#   env: OUT=results folder (required for the checks)  DW=driftwatch binary, .gz unpacked
#        MODEL=the default model, or MODEL_PARTS="A B" its pieces (checked against the sha256
#        pinned in daemon/src/setup.rs)  SUITES=folder of suites  LBB=a built llama-batched-bench
#        LBB_SRC=llama.cpp tree (.tar.xz) to build one from; each defaults to what pack wrote
#        CUDA_ARCHS=90-real GPU_LAYERS=-1 (all) PARALLELS="1 16 64" PROMPTS=16 SAMPLES=4
#        MAX_TOKENS=128 ADAPTERS=50 EVAL=1 (0: none) EVAL_ARGS (extra `eval` flags, for trials)
#        STEP_TIMEOUT=300 (seconds for the eval, for each adapter's run, for the yardstick's build)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

if [ "${1:-}" = pack ]; then
  BIN="${2:?usage: scripts/gpu-check.sh pack BINARY}"
  CACHE="${DRIFTWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftwatch}"
  SRC="$CACHE/yardstick/src/vendor/llama.cpp"
  [ -d "$SRC" ] || scripts/yardstick.sh quantize >/dev/null  # fetches the pinned tree (and builds a tool)
  rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/c
  EXCLUDE="$(git rev-parse --git-path info/exclude)"
  grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >>"$EXCLUDE"
  gzip -9 -c "$BIN" >.gpu/a/driftwatch.gz
  # What CMake needs for llama-batched-bench: the libraries and tools/, not the web UI, tests,
  # examples, models or docs.
  tar -cJf .gpu/a/llama.cpp.tar.xz -C "$SRC" --exclude='.git*' --exclude=tools/ui \
    CMakeLists.txt cmake app ggml/CMakeLists.txt ggml/cmake ggml/include ggml/src src include common tools vendor licenses LICENSE
  tar -czf .gpu/a/suites.tar.gz -C "$CACHE" suites
  M="$CACHE/models/$MODEL_NAME"
  half=$(( ($(stat -c %s "$M") + 1) / 2 ))
  head -c "$half" "$M" >.gpu/b/model.part
  tail -c +"$(( half + 1 ))" "$M" >.gpu/c/model.part
  # What travels in a call: the tracked tree and one carried folder, 64 MiB at most.
  tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
  for p in a b c; do
    size=$(( tree + $(du -sb ".gpu/$p" | cut -f1) ))
    echo ".gpu/$p: $(( size / 1048576 )) MiB with the tracked tree" >&2
    [ "$size" -lt $(( 62 * 1048576 )) ] || { echo ".gpu/$p is too large to travel" >&2; exit 1; }
  done
  exit 0
fi

# cuBLAS for a cuda build comes from PyTorch's CUDA wheels there (docs/gpu.md); nvcc from the
# toolkit, on the PATH or in /usr/local/cuda.
CU="$(python3 -c 'import nvidia.cu13; print(list(nvidia.cu13.__path__)[0] + "/lib")' 2>/dev/null || true)"
if [ -n "$CU" ] && [ -d "$CU" ]; then export LD_LIBRARY_PATH="$CU${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
HAS_GPU=0; command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && HAS_GPU=1

# The yardstick's build, in .gpu/build (kept on a warm machine between calls) or $1: started
# in its own session so that it outlives the call that starts it; `.rc` says it ended.
start_build() {
  local dir="$1"
  [ -f "$dir/rc" ] || [ -f "$dir/pid" ] && return 0
  mkdir -p "$dir/src"
  tar -xJf "$LBB_SRC" -C "$dir/src"
  local cuda=OFF; command -v nvcc >/dev/null && cuda=ON
  echo "GGML_CUDA=$cuda" >"$dir/log"
  setsid bash -c '
    cmake -S "$1/src" -B "$1/build" -G "$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")" \
      -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA="$2" -DCMAKE_CUDA_ARCHITECTURES="$3" -DGGML_NATIVE=ON \
      -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF \
      && cmake --build "$1/build" --target llama-batched-bench -j "$(nproc)"
    echo $? >"$1/rc"' _ "$dir" "$cuda" "${CUDA_ARCHS:-90-real}" >>"$dir/log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

if [ "${1:-}" = start ]; then
  : "${DW:=.gpu/a/driftwatch.gz}" "${LBB_SRC:=.gpu/a/llama.cpp.tar.xz}"
  mkdir -p .gpu/bin
  gzip -dc "$DW" >.gpu/bin/driftwatch && chmod +x .gpu/bin/driftwatch
  start_build .gpu/build
  command -v nvcc >/dev/null && nvcc --version | tail -2
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  .gpu/bin/driftwatch doctor
  exit 0
fi

: "${OUT:?OUT must name the results folder}"
GPU_LAYERS="${GPU_LAYERS:--1}" PARALLELS="${PARALLELS:-1 16 64}" PROMPTS="${PROMPTS:-16}"
SAMPLES="${SAMPLES:-4}" MAX_TOKENS="${MAX_TOKENS:-128}" ADAPTERS="${ADAPTERS:-50}" EVAL="${EVAL:-1}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
RES="$WORK/results"
mkdir -p "$RES"
SERVER=""
log() { echo "[$(date +%T)] $*" | tee -a "$RES/steps.log" >&2; }

# The summary, from whatever the steps left (also when one failed or the command is stopped).
summarize() {
  python3 - "$RES" <<'PY'
import csv, json, os, sys
res = sys.argv[1]
def read(name):
    p = os.path.join(res, name)
    return open(p).read() if os.path.exists(p) else ""
print("device: " + (read("gpu.txt").strip() or "unknown"))
if read("doctor.json"):
    d = json.loads(read("doctor.json"))
    print(f"driftwatch: gpu_device {d.get('gpu_device')}, default_gpu_layers {d.get('default_gpu_layers')}, offload {d['build'].get('gpu_offload')}")
print("yardstick: " + (read("yardstick.txt").strip() or "none"))
print()
print("| parallel | driftwatch decode t/s | llama-batched-bench t/s | ratio | driftwatch prefill t/s | llama-batched-bench prefill t/s |")
print("|---|---|---|---|---|---|")
lbb = {}
for l in read("lbb.jsonl").splitlines():
    if l.strip():
        b = json.loads(l)
        lbb[b["pl"]] = b
for l in read("bench.jsonl").splitlines():
    if not l.strip():
        continue
    a = json.loads(l)
    b = lbb.get(a["parallel"])
    cols = [f"{b['speed_tg']:.1f}", f"{a['decode_tokens_per_s'] / b['speed_tg']:.3f}"] if b else ["", ""]
    print(f"| {a['parallel']} | {a['decode_tokens_per_s']:.1f} | {cols[0]} | {cols[1]} | {a['prefill_tokens_per_s']:.1f} | {b['speed_pp']:.1f} |" if b else
          f"| {a['parallel']} | {a['decode_tokens_per_s']:.1f} | | | {a['prefill_tokens_per_s']:.1f} | |")
print()
for line in read("eval.txt").splitlines():
    if line.startswith(("run 1:", "generated", "eval_wall_s")):
        print(f"eval: {line}")
rows = list(csv.DictReader(read("memory.csv").splitlines()))
if rows:
    mem = [int(r["memory_mib"]) for r in rows]
    bad = [r["adapters_done"] for r in rows if r["status"] != "completed"]
    first = mem[min(1, len(mem) - 1)]
    print(f"memory over {len(rows) - 1} adapters (MiB): after the baseline {mem[0]}, after the first adapter {first}, "
          f"after the last {mem[-1]}, highest {max(mem)}; last minus first adapter: {mem[-1] - first}"
          + (f"; runs not completed: {', '.join(bad)}" if bad else ""))
PY
}
finish() {
  local rc=$?
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
  [ "$rc" = 0 ] || log "stopped with exit code $rc"
  summarize >"$RES/summary.md" 2>&1 || true
  cp "$RES/summary.md" "$OUT/summary.md"
  tar -czf "$OUT/results.tar.gz" -C "$RES" .
  cat "$OUT/summary.md"
  rm -rf "$WORK"
  exit "$rc"
}
trap finish EXIT

# What `pack` carried (.gpu/), unless the environment names others.
if [ -d .gpu/a ]; then
  if [ -x .gpu/bin/driftwatch ]; then : "${DW:=.gpu/bin/driftwatch}"; else : "${DW:=.gpu/a/driftwatch.gz}"; fi
  : "${LBB_SRC:=.gpu/a/llama.cpp.tar.xz}"
  if [ -z "${SUITES:-}" ]; then
    mkdir -p "$WORK/suites-src"
    tar -xzf .gpu/a/suites.tar.gz -C "$WORK/suites-src"
    SUITES="$WORK/suites-src/suites"
  fi
fi
if [ -z "${MODEL:-}" ] && [ -z "${MODEL_PARTS:-}" ] && [ -d .gpu/a ]; then
  [ -f .gpu/b/model.part ] && [ -f .gpu/c/model.part ] || {
    log "the model's pieces (.gpu/b, .gpu/c) are not here: the machine went back between calls; carry them again, one call right after the other"
    exit 1
  }
  MODEL_PARTS=".gpu/b/model.part .gpu/c/model.part"
fi
: "${DW:?DW must name the driftwatch binary}"
if [[ "$DW" == *.gz ]]; then gzip -dc "$DW" >"$WORK/driftwatch"; chmod +x "$WORK/driftwatch"; DW="$WORK/driftwatch"; fi

# The cache driftwatch reads: the default model and the suites.
export DRIFTWATCH_CACHE="$WORK/cache"
mkdir -p "$DRIFTWATCH_CACHE/models" "$DRIFTWATCH_CACHE/suites"
MODEL_PATH="$DRIFTWATCH_CACHE/models/$MODEL_NAME"
if [ -n "${MODEL_PARTS:-}" ]; then
  # shellcheck disable=SC2086 # the parts are a list
  cat $MODEL_PARTS >"$MODEL_PATH"
else
  : "${MODEL:?MODEL or MODEL_PARTS must name the default model}"
  ln -s "$(realpath "$MODEL")" "$MODEL_PATH"
fi
WANT="$(grep -o 'DEFAULT_MODEL_SHA256: &str = "[0-9a-f]*"' daemon/src/setup.rs | grep -o '[0-9a-f]\{64\}')"
GOT="$(sha256sum "$MODEL_PATH" | cut -d' ' -f1)"
[ "$GOT" = "$WANT" ] || { log "the model's sha256 is $GOT, not $WANT"; exit 1; }
echo "$GOT  $MODEL_NAME" >"$MODEL_PATH.sha256"
[ -n "${SUITES:-}" ] || { log "no suites: SUITES, or pack's .gpu/a"; exit 1; }
for s in "$SUITES"/*; do ln -s "$(realpath "$s")" "$DRIFTWATCH_CACHE/suites/"; done
export RUST_LOG="${RUST_LOG:-warn}"

# The yardstick: given, built before (a warm machine keeps .gpu/build), or built now.
BUILD_DIR=""
if [ -z "${LBB:-}" ] && [ -n "${LBB_SRC:-}" ]; then
  BUILD_DIR=.gpu/build; [ -d .gpu ] || BUILD_DIR="$WORK/build"
  if [ -f "$BUILD_DIR/rc" ]; then
    log "llama-batched-bench: built before ($(head -1 "$BUILD_DIR/log"), exit code $(cat "$BUILD_DIR/rc"))"
  else
    start_build "$BUILD_DIR"
    log "llama-batched-bench: $(head -1 "$BUILD_DIR/log") build running"
  fi
fi

# The GPU's used memory in MiB, or (no GPU) the resident memory of process $1.
memory_mib() {
  if [ "$HAS_GPU" = 1 ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' '
  else
    awk '/^VmRSS/ { printf "%d\n", $2 / 1024 }' "/proc/$1/status"
  fi
}

log "device"
if [ "$HAS_GPU" = 1 ]; then
  { nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } >"$RES/gpu.txt" 2>&1
else
  echo "no GPU (no nvidia-smi, or it lists none)" >"$RES/gpu.txt"
fi
"$DW" doctor --json >"$RES/doctor.json"
"$DW" doctor >"$RES/doctor.txt" 2>&1
if [ "$HAS_GPU" = 1 ] && [ "$GPU_LAYERS" != 0 ] &&
  ! python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["gpu_device"] else 1)' "$RES/doctor.json"; then
  log "nvidia-smi lists a GPU but driftwatch found none (doctor.txt says why): no CPU figures in its place"
  exit 1
fi

if [ "$EVAL" = 1 ]; then
  log "eval of the default model"
  start=$(date +%s)
  # shellcheck disable=SC2086 # EVAL_ARGS is a list of flags
  DRIFTWATCH_GPU_LAYERS="$GPU_LAYERS" timeout "$STEP_TIMEOUT" "$DW" eval default --config config/driftwatch.toml \
    --data-dir "$WORK/eval-data" ${EVAL_ARGS:-} >"$RES/eval.txt" 2>"$RES/eval.log" || log "the eval failed or timed out (eval.log)"
  echo "eval_wall_s $(( $(date +%s) - start ))" >>"$RES/eval.txt"
fi

log "$ADAPTERS adapters, one after another"
mkdir -p "$WORK/pool" "$WORK/watch"
for i in $(seq 1 "$ADAPTERS"); do
  "$DW" synth-adapter --base "$MODEL_PATH" --seed "$i" --out "$WORK/pool/adapter-$i.gguf" >/dev/null 2>&1
done
cat >"$WORK/adapters.toml" <<EOF
[daemon]
data_dir = "$WORK/adapter-data"
watch = ["$WORK/watch"]
settle_ms = 200
[model]
base = "$MODEL_PATH"
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
"$DW" serve --config "$WORK/adapters.toml" >"$RES/serve.log" 2>&1 &
SERVER=$!
# The status of the Nth run to end (completed, failed or cancelled), once N have ended.
nth_ended() {
  "$DW" status --data-dir "$WORK/adapter-data" --recent 1000 --json 2>/dev/null | python3 -c '
import json, sys
runs = sorted((r["run"] for r in json.load(sys.stdin)["recent"] if r["run"]["status"] in ("completed", "failed", "cancelled")), key=lambda r: r["id"])
n = int(sys.argv[1])
print(runs[n - 1]["status"] if len(runs) >= n else "")' "$1" 2>/dev/null || true
}
wait_for() {
  local deadline=$(( $(date +%s) + STEP_TIMEOUT )) s
  while [ "$(date +%s)" -lt "$deadline" ]; do
    s="$(nth_ended "$1")"
    [ -n "$s" ] && { echo "$s"; return 0; }
    kill -0 "$SERVER" 2>/dev/null || { log "serve exited (serve.log)"; return 1; }
    sleep 0.5
  done
  log "run $1 did not end within ${STEP_TIMEOUT}s"
  return 1
}
echo "adapters_done,memory_mib,status" >"$RES/memory.csv"
status="$(wait_for 1)"  # the baseline
echo "0,$(memory_mib "$SERVER"),$status" >>"$RES/memory.csv"
for i in $(seq 1 "$ADAPTERS"); do
  mv "$WORK/pool/adapter-$i.gguf" "$WORK/watch/"
  status="$(wait_for $(( i + 1 )))"
  echo "$i,$(memory_mib "$SERVER"),$status" >>"$RES/memory.csv"
done
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=""

if [ -n "$BUILD_DIR" ]; then
  log "waiting for the yardstick's build"
  deadline=$(( $(date +%s) + STEP_TIMEOUT ))
  while [ ! -f "$BUILD_DIR/rc" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 2; done
  cp "$BUILD_DIR/log" "$RES/yardstick-build.log" 2>/dev/null || true
  if [ "$(cat "$BUILD_DIR/rc" 2>/dev/null)" = 0 ]; then
    LBB="$BUILD_DIR/build/bin/llama-batched-bench"
  else
    log "the yardstick's build failed or did not end (yardstick-build.log)"
  fi
fi
[ -n "${LBB:-}" ] && echo "$LBB ($(head -1 "$BUILD_DIR/log" 2>/dev/null || echo given))" >"$RES/yardstick.txt"

log "bench at parallel $PARALLELS"
NGL="$GPU_LAYERS"; [ "$NGL" = -1 ] && NGL=999
for p in $PARALLELS; do
  "$DW" bench --model "$MODEL_PATH" --gpu-layers "$NGL" --parallel "$p" --prompts "$PROMPTS" --samples "$SAMPLES" \
    --max-tokens "$MAX_TOKENS" --ignore-eos --json >>"$RES/bench.jsonl" 2>>"$RES/bench.log" || { log "bench at parallel $p failed"; continue; }
  if [ -n "${LBB:-}" ]; then
    read -r PP T < <(tail -1 "$RES/bench.jsonl" | python3 -c 'import json,sys; a=json.load(sys.stdin); print(round(a["avg_prompt_tokens"]), a["threads"])')
    "$LBB" -m "$MODEL_PATH" -ngl "$NGL" -t "$T" -tb "$T" -c $(( p * (PP + MAX_TOKENS) + 256 )) -b 512 -ub 512 \
      -npp "$PP" -ntg "$MAX_TOKENS" -npl "$p" --output-format jsonl 2>>"$RES/lbb.log" | grep '^{' >>"$RES/lbb.jsonl" ||
      log "llama-batched-bench at parallel $p failed (lbb.log)"
  fi
done
log "done"
