#!/usr/bin/env bash
# The openai backend measured, side by side in one run on this machine:
#   1. the same N x K work on the embedded engine, through one llama-server, and through two
#      llama-servers sharing the run (2 servers x THREADS/2 threads against 1 x THREADS: on one
#      machine the two share its cores, so this shows the coordinator's overhead and the queue
#      across endpoints, not the speedup of independent machines);
#   2. whether a seed's text depends on what else shares the server's batch: the same seeds at
#      concurrency 1 and at 16, on llama-server and (the control) on the embedded engine.
#
#   scripts/scale-out-bench.sh [MODEL]
#   env: PROMPTS=16 SAMPLES=4 PARALLEL=16 MAX_TOKENS=128 THREADS=$(nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-${DRIFTWATCH_CACHE:-$HOME/.cache/driftwatch}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PROMPTS="${PROMPTS:-16}" SAMPLES="${SAMPLES:-4}" PARALLEL="${PARALLEL:-16}"
MAX_TOKENS="${MAX_TOKENS:-128}" THREADS="${THREADS:-$(nproc)}"
LS="$(scripts/yardstick.sh server)"
cargo build -q --workspace  # the whole workspace, as `make test` builds it: no rebuild
DW=target/debug/driftwatch
export RUST_LOG=error
WORK="$(mktemp -d)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# server NAME THREADS SLOTS: starts a llama-server and sets URL once /health answers (not in a
# subshell, so that PIDS keeps it for stop_servers).
server() {
  local port; port="$(free_port)"
  "$LS" -m "$MODEL" -t "$2" -tb "$2" -b 512 -ub 512 -np "$3" -c $(( $3 * (MAX_TOKENS + 256) )) \
    --host 127.0.0.1 --port "$port" --no-webui >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && { URL="http://127.0.0.1:$port"; return; }
    sleep 0.2
  done
  echo "llama-server $1 did not start:" >&2; tail -20 "$WORK/$1.log" >&2; exit 1
}
stop_servers() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
bench() { "$DW" bench --model "$MODEL" --prompts "$PROMPTS" --samples "$SAMPLES" --max-tokens "$MAX_TOKENS" --json "$@"; }

echo "model: $MODEL; $PROMPTS prompts x $SAMPLES samples x $MAX_TOKENS tokens, parallel $PARALLEL, $THREADS threads" >&2
EMB="$(bench --ignore-eos --threads "$THREADS" --parallel "$PARALLEL")"
server one "$THREADS" "$PARALLEL"; U1="$URL"
ONE="$(bench --ignore-eos --backend openai --endpoint "$U1" --parallel "$PARALLEL")"
stop_servers
HALF=$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))
server a "$HALF" $(( PARALLEL / 2 )); UA="$URL"
server b "$HALF" $(( PARALLEL / 2 )); UB="$URL"
# The coordinator's own CPU time (user + system) while two servers generate.
TWO="$(python3 - "$DW" "$MODEL" "$PROMPTS" "$SAMPLES" "$MAX_TOKENS" "$UA" "$UB" $(( PARALLEL / 2 )) <<'PY'
import json, resource, subprocess, sys
dw, model, n, k, t, ua, ub, p = sys.argv[1:]
out = subprocess.run([dw, "bench", "--model", model, "--prompts", n, "--samples", k, "--max-tokens", t, "--json",
                      "--ignore-eos", "--backend", "openai", "--endpoint", ua, "--endpoint", ub, "--parallel", p],
                     check=True, capture_output=True, text=True).stdout
r = json.loads(out)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
r["coordinator_cpu_s"] = u.ru_utime + u.ru_stime
print(json.dumps(r))
PY
)"
stop_servers

# The same seeds at concurrency 1 and 16 (sampling as in an evaluation: default settings, EOS on).
server inv "$THREADS" 16; U="$URL"
bench --backend openai --endpoint "$U" --parallel 1 --texts "$WORK/remote-1.jsonl" >/dev/null
bench --backend openai --endpoint "$U" --parallel 16 --texts "$WORK/remote-16.jsonl" >/dev/null
stop_servers
bench --threads "$THREADS" --parallel 1 --texts "$WORK/embedded-1.jsonl" >/dev/null
bench --threads "$THREADS" --parallel 16 --texts "$WORK/embedded-16.jsonl" >/dev/null

python3 - "$EMB" "$ONE" "$TWO" "$WORK" "$THREADS" "$HALF" <<'PY'
import json, sys
emb, one, two = (json.loads(x) for x in sys.argv[1:4])
work, threads, half = sys.argv[4], sys.argv[5], sys.argv[6]
rows = [("embedded engine, %s threads" % threads, emb), ("1 llama-server, %s threads" % threads, one),
        ("2 llama-servers, %s thread(s) each" % half, two)]
print("| setup | wall s | generated tokens/s | vs 1 endpoint |")
print("|---|---|---|---|")
for name, r in rows:
    print("| %s | %.2f | %.1f | %.3f |" % (name, r["wall_s"], r["generated_tokens"] / r["wall_s"], one["wall_s"] / r["wall_s"]))
cpu = two["coordinator_cpu_s"]
print()
print("coordinator CPU with 2 endpoints: %.2f s for %d samples (%.1f ms per sample, %.2f%% of one core over the run)"
      % (cpu, two["sequences"], 1000 * cpu / two["sequences"], 100 * cpu / two["wall_s"]))
def load(name):
    out = {}
    for line in open("%s/%s.jsonl" % (work, name)):
        s = json.loads(line)
        out[(s["prompt_id"], s["k"])] = s["text"]
    return out
print()
print("| backend | samples | texts differing, concurrency 1 vs 16 |")
print("|---|---|---|")
for b in ("remote", "embedded"):
    a, c = load(b + "-1"), load(b + "-16")
    diff = sum(1 for k in a if a[k] != c.get(k))
    label = "llama-server" if b == "remote" else "embedded engine"
    print("| %s | %d | %d (%.1f%%) |" % (label, len(a), diff, 100.0 * diff / max(1, len(a))))
PY
