#!/usr/bin/env bash
# driftwatch's generation throughput side by side with llama.cpp's own llama-batched-bench, on
# the same model, threads, parallel sequences and token counts, and the same N x K work sent to
# llama-server (PARALLEL slots, PARALLEL requests in flight) over HTTP. Prints the ratios.
#
#   scripts/bench-vs-llama.sh [MODEL]
#   env: PROMPTS=16 SAMPLES=4 PARALLEL=16 MAX_TOKENS=128 THREADS=$(nproc)
#        PROMPT_FILE=F   one prompt a line instead of config/bench_prompts.txt, for driftwatch and
#                        llama-server alike (llama-batched-bench takes the mean length)
#        EOS=1           the N x K work against llama-server ends each sample at end-of-sequence,
#                        as an evaluation does (its rows then compare generated tokens per second
#                        too, since the two sides' samples end at other lengths); default 0: every
#                        sample is MAX_TOKENS long
#
# Both sides generate exactly MAX_TOKENS per sequence (driftwatch with --ignore-eos; see EOS) and keep one
# KV-cache stream per sequence (driftwatch's default; llama-batched-bench without -kvu), with flash
# attention on auto.
# llama-batched-bench gives every sequence its own prompt of PP tokens (PP = driftwatch's mean
# templated prompt length), processing PARALLEL sequences per round; PROMPTS×SAMPLES sequences
# take PROMPTS×SAMPLES/PARALLEL rounds. driftwatch prefills each distinct prompt once.
# llama-server gets the same prompts, seeds, sampling settings and MAX_TOKENS per sequence
# (ignore_eos), through /v1/chat/completions with the model's own chat template (--jinja), its
# context split evenly over its PARALLEL slots; scripts/server-bench.py drives it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-${DRIFTWATCH_CACHE:-$HOME/.cache/driftwatch}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PROMPTS="${PROMPTS:-16}" SAMPLES="${SAMPLES:-4}" PARALLEL="${PARALLEL:-16}"
MAX_TOKENS="${MAX_TOKENS:-128}" THREADS="${THREADS:-$(nproc)}" EOS="${EOS:-0}"
case "$EOS" in 0 | 1) ;; *) echo "EOS must be 0 or 1, not '$EOS'" >&2; exit 2 ;; esac
# Built as llama.cpp builds it by default, as driftwatch is (llamafile kernels on,
# .cargo/config.toml): the ratios are kernels-alike for the default model. For a model with
# K-quant weights driftwatch switches ggml's tiled K-quant kernel off and (for Q4_K, Q2_K) loads
# no repacked copies, for batch invariance, while the llama.cpp tools keep both
# (docs/reliability.md has the cost).
LBB="$(scripts/yardstick.sh)"
LS="$(scripts/yardstick.sh server)"
cargo build -q --workspace  # the whole workspace, as `make test` builds it: no rebuild
DW=target/debug/driftwatch
export RUST_LOG=error

dw() { "$DW" bench --model "$MODEL" --threads "$THREADS" --json "$@"; }
lbb() { "$LBB" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -b 512 -ub 512 --output-format jsonl "$@" 2>/dev/null | grep '^{'; }

echo "model: $MODEL" >&2
echo "threads $THREADS, parallel $PARALLEL, $PROMPTS prompts x $SAMPLES samples, $MAX_TOKENS tokens each" >&2
PF=()
[ -n "${PROMPT_FILE:-}" ] && PF=(--prompt-file "$PROMPT_FILE")
A="$(dw --ignore-eos ${PF[@]+"${PF[@]}"} --prompts "$PROMPTS" --samples "$SAMPLES" --parallel "$PARALLEL" --max-tokens "$MAX_TOKENS")"
PP="$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["avg_prompt_tokens"]))' "$A")"
CTX=$(( PARALLEL * (PP + MAX_TOKENS) + 256 ))
B="$(lbb -c "$CTX" -npp "$PP" -ntg "$MAX_TOKENS" -npl "$PARALLEL")"
# Speedup of PARALLEL sequences over one at a time, on a smaller job list (the same for both).
S1="$(dw --ignore-eos ${PF[@]+"${PF[@]}"} --prompts 4 --samples 4 --parallel 1 --max-tokens 64)"
# The same without the padding sequence that keeps a one-sequence step batch-invariant.
S1U="$(dw --ignore-eos ${PF[@]+"${PF[@]}"} --prompts 4 --samples 4 --parallel 1 --max-tokens 64 --no-batch-invariance)"
S16="$(dw --ignore-eos ${PF[@]+"${PF[@]}"} --prompts 4 --samples 4 --parallel 16 --max-tokens 64)"
B1="$(lbb -c $(( PP + 64 + 256 )) -npp "$PP" -ntg 64 -npl 1)"

# With EOS=1, the N x K work once more, with samples ending at end-of-sequence, for the server rows.
AE="$A"
SE=(--ignore-eos)
if [ "$EOS" = 1 ]; then
  AE="$(dw ${PF[@]+"${PF[@]}"} --prompts "$PROMPTS" --samples "$SAMPLES" --parallel "$PARALLEL" --max-tokens "$MAX_TOKENS")"
  SE=()
fi

# llama-server: started on a free loopback port, stopped on exit.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp)"
"$LS" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -b 512 -ub 512 -np "$PARALLEL" \
  -c $(( PARALLEL * (2 * PP + MAX_TOKENS + 64) )) --jinja --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { echo "llama-server exited:" >&2; tail -20 "$LOG" >&2; exit 1; }
  sleep 0.2
done
C="$(scripts/server-bench.py --url "http://127.0.0.1:$PORT" --prompts "$PROMPTS" --samples "$SAMPLES" \
  --concurrency "$PARALLEL" --max-tokens "$MAX_TOKENS" ${SE[@]+"${SE[@]}"} ${PF[@]+"${PF[@]}"})"

python3 - "$A" "$B" "$S1" "$S16" "$B1" "$PROMPTS" "$SAMPLES" "$PARALLEL" "$C" "$S1U" "$AE" "$EOS" <<'PY'
import json, sys
a, b, s1, s16, b1 = (json.loads(x) for x in sys.argv[1:6])
prompts, samples, parallel = (int(x) for x in sys.argv[6:9])
c = json.loads(sys.argv[9])
s1u = json.loads(sys.argv[10])
ae = json.loads(sys.argv[11])
eos = sys.argv[12] == "1"
seqs = prompts * samples
rounds = seqs / parallel
lbb_e2e = rounds * b["t"]
print(f"| measure | driftwatch | llama-batched-bench | ratio (driftwatch / llama) |")
print(f"|---|---|---|---|")
print(f"| decode tokens/s (B={parallel}) | {a['decode_tokens_per_s']:.1f} | {b['speed_tg']:.1f} | {a['decode_tokens_per_s']/b['speed_tg']:.3f} |")
gen = a['generated_tokens'] / (a['decode_s'] + a.get('sample_s', 0.0))
print(f"| decode + choosing the tokens, tokens/s (llama-batched-bench chooses none) | {gen:.1f} | {b['speed_tg']:.1f} | {gen/b['speed_tg']:.3f} |")
print(f"| prefill tokens/s | {a['prefill_tokens_per_s']:.1f} | {b['speed_pp']:.1f} | {a['prefill_tokens_per_s']/b['speed_pp']:.3f} |")
print(f"| prompt tokens evaluated for {seqs} sequences | {a['prefill_tokens']} | {round(rounds*b['pp']*b['pl'])} | |")
print(f"| end-to-end s, {prompts} prompts x {samples} samples | {a['wall_s']:.2f} | {lbb_e2e:.2f} ({rounds:g} rounds x {b['t']:.2f}) | {lbb_e2e/a['wall_s']:.3f}x faster |")
print(f"| decode tokens/s, one sequence at a time (driftwatch pads each step to two sequences: batch invariance) | {s1['decode_tokens_per_s']:.1f} | {b1['speed_tg']:.1f} | {s1['decode_tokens_per_s']/b1['speed_tg']:.3f} |")
print(f"| the same unpadded (--no-batch-invariance) | {s1u['decode_tokens_per_s']:.1f} | {b1['speed_tg']:.1f} | {s1u['decode_tokens_per_s']/b1['speed_tg']:.3f} |")
print(f"| speedup of parallel 16 over 1 (16 seqs x 64 tokens, wall) | {s1['wall_s']/s16['wall_s']:.2f}x | | |")
print()
print(f"| measure | driftwatch | llama-server ({parallel} slots, {parallel} requests in flight) | ratio |")
print(f"|---|---|---|---|")
ends = "ending at end-of-sequence, at most" if eos else "x"
print(f"| end-to-end s, {prompts} prompts x {samples} samples {ends} {ae['max_tokens']} tokens | {ae['wall_s']:.2f} | {c['wall_s']:.2f} | {c['wall_s']/ae['wall_s']:.3f}x faster |")
print(f"| generated tokens | {ae['generated_tokens']} | {c['completion_tokens']} | |")
if eos:
    dw_tps, srv_tps = ae['generated_tokens'] / ae['wall_s'], c['completion_tokens'] / c['wall_s']
    print(f"| generated tokens per wall second | {dw_tps:.1f} | {srv_tps:.1f} | {dw_tps/srv_tps:.3f} |")
print(f"| prompt tokens: evaluated (driftwatch), usage.prompt_tokens (server) | {ae['prefill_tokens']} | {c['prompt_tokens']} | |")
if not eos:
    # An engine that decodes at llama-batched-bench's speed, with no prefill and no overhead at
    # all, takes this long: the server's time over it is the most such an engine gains on it
    # (a run's noise moves either side by a few percent).
    floor = c['completion_tokens'] / b['speed_tg']
    print(f"| the same tokens decoded alone at llama-batched-bench's speed, s (no prefill, no overhead) | | {floor:.2f} | ceiling: {c['wall_s']/floor:.3f}x faster than the server |")
PY
