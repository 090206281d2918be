#!/usr/bin/env bash
# driftwatch's generation throughput side by side with llama.cpp's own llama-batched-bench, on
# the same model, threads, parallel sequences and token counts. Prints the ratios.
#
#   scripts/bench-vs-llama.sh [MODEL]
#   env: PROMPTS=16 SAMPLES=4 PARALLEL=16 MAX_TOKENS=128 THREADS=$(nproc)
#
# Both sides generate exactly MAX_TOKENS per sequence (driftwatch with --ignore-eos) and keep one
# KV-cache stream per sequence (driftwatch's default; llama-batched-bench without -kvu), with flash
# attention on auto.
# llama-batched-bench gives every sequence its own prompt of PP tokens (PP = driftwatch's mean
# templated prompt length), processing PARALLEL sequences per round; PROMPTS×SAMPLES sequences
# take PROMPTS×SAMPLES/PARALLEL rounds. driftwatch prefills each distinct prompt once.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-${DRIFTWATCH_CACHE:-$HOME/.cache/driftwatch}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PROMPTS="${PROMPTS:-16}" SAMPLES="${SAMPLES:-4}" PARALLEL="${PARALLEL:-16}"
MAX_TOKENS="${MAX_TOKENS:-128}" THREADS="${THREADS:-$(nproc)}"
LBB="$(scripts/yardstick.sh)"
cargo build -q -p driftwatch
DW=target/debug/driftwatch
export RUST_LOG=error

dw() { "$DW" bench --model "$MODEL" --threads "$THREADS" --ignore-eos --json "$@"; }
lbb() { "$LBB" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -b 512 -ub 512 --output-format jsonl "$@" 2>/dev/null | grep '^{'; }

echo "model: $MODEL" >&2
echo "threads $THREADS, parallel $PARALLEL, $PROMPTS prompts x $SAMPLES samples, $MAX_TOKENS tokens each" >&2
A="$(dw --prompts "$PROMPTS" --samples "$SAMPLES" --parallel "$PARALLEL" --max-tokens "$MAX_TOKENS")"
PP="$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["avg_prompt_tokens"]))' "$A")"
CTX=$(( PARALLEL * (PP + MAX_TOKENS) + 256 ))
B="$(lbb -c "$CTX" -npp "$PP" -ntg "$MAX_TOKENS" -npl "$PARALLEL")"
# Speedup of PARALLEL sequences over one at a time, on a smaller job list (the same for both).
S1="$(dw --prompts 4 --samples 4 --parallel 1 --max-tokens 64)"
S16="$(dw --prompts 4 --samples 4 --parallel 16 --max-tokens 64)"
B1="$(lbb -c $(( PP + 64 + 256 )) -npp "$PP" -ntg 64 -npl 1)"

python3 - "$A" "$B" "$S1" "$S16" "$B1" "$PROMPTS" "$SAMPLES" "$PARALLEL" <<'PY'
import json, sys
a, b, s1, s16, b1 = (json.loads(x) for x in sys.argv[1:6])
prompts, samples, parallel = (int(x) for x in sys.argv[6:9])
seqs = prompts * samples
rounds = seqs / parallel
lbb_e2e = rounds * b["t"]
print(f"| measure | driftwatch | llama-batched-bench | ratio (driftwatch / llama) |")
print(f"|---|---|---|---|")
print(f"| decode tokens/s (B={parallel}) | {a['decode_tokens_per_s']:.1f} | {b['speed_tg']:.1f} | {a['decode_tokens_per_s']/b['speed_tg']:.3f} |")
print(f"| prefill tokens/s | {a['prefill_tokens_per_s']:.1f} | {b['speed_pp']:.1f} | {a['prefill_tokens_per_s']/b['speed_pp']:.3f} |")
print(f"| prompt tokens evaluated for {seqs} sequences | {a['prefill_tokens']} | {round(rounds*b['pp']*b['pl'])} | |")
print(f"| end-to-end s, {prompts} prompts x {samples} samples | {a['wall_s']:.2f} | {lbb_e2e:.2f} ({rounds:g} rounds x {b['t']:.2f}) | {lbb_e2e/a['wall_s']:.3f}x faster |")
print(f"| decode tokens/s, one sequence at a time | {s1['decode_tokens_per_s']:.1f} | {b1['speed_tg']:.1f} | {s1['decode_tokens_per_s']/b1['speed_tg']:.3f} |")
print(f"| speedup of parallel 16 over 1 (16 seqs x 64 tokens, wall) | {s1['wall_s']/s16['wall_s']:.2f}x | | |")
PY
