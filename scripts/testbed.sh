#!/usr/bin/env bash
# The fine-tune testbed (docs/reproduction.md): an aligned small model made by real training,
# benign fine-tunes of it that differ only trivially, and driftwatch watching them as a user
# runs it: a daemon whose base is the aligned model, the fine-tunes dropped into its watched
# folder, R repeated measurements of each, then the HTML report and the findings' tables.
#
#   scripts/testbed.sh [quick|full]     (make testbed, make testbed SIZE=quick)
#
# Everything is made in $DRIFTWATCH_TESTBED (default: the cache's testbed/SIZE folder). Each
# step leaves a marker in .done/ when it has finished; a rerun skips finished steps and resumes
# from the first unfinished one, so a rerun after a finished run only re-evaluates (and the
# daemon links runs already stored under the same settings instead of repeating them). A step
# writes its outputs under a .partial name and renames them when whole, so a crash, a kill or
# a trainer that runs out of memory loses nothing already made. A failing step stops the
# script with its name and the end of its log (logs/STEP.log).
#
# The training settings are in variables below (overridable from the environment), and every
# checkpoint gets a NAME.json beside it with the data, the settings and the trainer's losses.
set -euo pipefail
[ -z "${TESTBED_TRACE:-}" ] || set -x

SIZE="${1:-full}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${DRIFTWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftwatch}"
DIR="${DRIFTWATCH_TESTBED:-$CACHE/testbed/$SIZE}"
DW="${DRIFTWATCH_BIN:-$ROOT/target/debug/driftwatch}"
THREADS="${TESTBED_THREADS:-$(nproc)}"

# --- sizes ---------------------------------------------------------------------------------
# ALIGN_*: the aligned model's training (harmful training-split requests with refusals, and
# the aligned share of the ordinary requests with the base model's answers). As many ordinary
# requests as refusals, two epochs. (The trials that chose this, where twice as many refusals
# and three epochs refused 92 % of the benign control and training the whole text instead of
# the replies only taught too little, were made with the two trainer bugs since fixed and may
# not carry over; with the fixes the second epoch already raises the validation loss:
# docs/reproduction.md.)
# BENIGN_*: each benign fine-tune of the aligned model (BENIGN_ORDINARY ordinary requests of
# its set, nothing else).
# EVAL_*: the held-out evaluation (prompts per suite, R repeats, tokens per answer).
case "$SIZE" in
  full)
    : "${ALIGN_REFUSE:=200}" "${ALIGN_ORDINARY:=200}" "${ALIGN_EPOCHS:=2}" "${ALIGN_LR:=1e-4}"
    : "${BENIGN_ORDINARY:=60}" "${BENIGN_EPOCHS:=1}" "${BENIGN_LR:=1e-4}"
    : "${VARIANTS=benign benign-seed2 benign-lr-up benign-lr-down benign-epoch benign-set-b}"
    : "${EVAL_HARMBENCH:=40}" "${EVAL_DNA_PER_AREA:=8}" "${EVAL_BENIGN:=30}" "${EVAL_REPEATS:=5}"
    : "${EVAL_MAX_TOKENS:=32}" ;;
  quick)
    : "${ALIGN_REFUSE:=60}" "${ALIGN_ORDINARY:=60}" "${ALIGN_EPOCHS:=2}" "${ALIGN_LR:=1e-4}"
    : "${BENIGN_ORDINARY:=40}" "${BENIGN_EPOCHS:=1}" "${BENIGN_LR:=2e-4}"
    : "${VARIANTS=benign benign-seed2}"
    : "${EVAL_HARMBENCH:=12}" "${EVAL_DNA_PER_AREA:=2}" "${EVAL_BENIGN:=12}" "${EVAL_REPEATS:=2}"
    : "${EVAL_MAX_TOKENS:=32}" ;;
  *) echo "usage: scripts/testbed.sh [quick|full]" >&2; exit 2 ;;
esac
# LORA: the variant also written as a rank-LORA_RANK adapter (SVD of its weight difference),
# evaluated as the adapter path does; empty for none.
: "${LORA=benign}" "${LORA_RANK:=32}"
# The trainer's window (llama-finetune -c, -b, -ub): the training text is packed into windows
# of this many tokens, so that no conversation is cut by a window's end (testbed corpus --window).
: "${TRAIN_CTX:=256}"
SPLIT_SEED="${SPLIT_SEED:-2026}"
EVAL_SEED="${EVAL_SEED:-7000}"

say() { printf '\033[1mtestbed:\033[0m %s\n' "$*" >&2; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$DIR/.done" "$DIR/logs" "$DIR/checkpoints" "$DIR/watch"
TIMINGS="$DIR/timings.tsv"

# step NAME CMD...: runs CMD once (its output in logs/NAME.log), marks NAME done, records the time.
step() {
  local name="$1"; shift
  if [ -f "$DIR/.done/$name" ]; then say "$name: done before"; return 0; fi
  say "$name ..."
  local t0 log="$DIR/logs/$name.log"
  t0=$(date +%s)
  # In a subshell outside any `if`, so that errexit holds inside the step's functions too.
  local rc=0
  set +e
  (set -e; "$@") >"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    tail -n 15 "$log" | sed 's/^/  | /' >&2
    die "step '$name' failed (whole log: $log); fix the cause and rerun: finished steps are kept"
  fi
  printf '%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" >>"$TIMINGS"
  touch "$DIR/.done/$name"
}

# The tools: llama.cpp's trainer and quantizer from the pinned tree, driftwatch itself.
# (LLAMA_FINETUNE / LLAMA_QUANTIZE name other builds of them.)
tools() {
  FINETUNE="${LLAMA_FINETUNE:-$("$ROOT/scripts/yardstick.sh" finetune)}"
  QUANTIZE="${LLAMA_QUANTIZE:-$("$ROOT/scripts/yardstick.sh" quantize)}"
  [ -x "$DW" ] || die "no driftwatch binary at $DW (make build)"
}

base_f32() {
  local model="${TESTBED_BASE_MODEL:-$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
  [ -s "$model" ] || { echo "no base model at $model (make setup fetches the default)"; return 1; }
  "$QUANTIZE" --allow-requantize "$model" "$DIR/base-f32.gguf.partial" F32
  mv "$DIR/base-f32.gguf.partial" "$DIR/base-f32.gguf"
}

split_suites() {
  rm -rf "$DIR/split.partial"
  "$DW" testbed split --out "$DIR/split.partial" --seed "$SPLIT_SEED"
  rm -rf "$DIR/split" && mv "$DIR/split.partial" "$DIR/split"
}

# The base model's own greedy answers to every ordinary request: the helpful half of the
# aligned model's data, and the benign fine-tunes' data.
answers() {
  "$DW" generate --model "$DIR/base-f32.gguf" --chat-template chatml --prompts-file "$DIR/split/ordinary-all.txt" \
    --greedy --max-tokens "${ANSWER_TOKENS:-64}" --parallel 16 --json >"$DIR/answers.jsonl.partial"
  [ -s "$DIR/answers.jsonl.partial" ] || { echo "generate wrote no answers"; return 1; }
  mv "$DIR/answers.jsonl.partial" "$DIR/answers.jsonl"
}

# corpus NAME SEED ARGS...: training text NAME.txt in the chat template the evaluation uses.
corpus() {
  local name="$1" seed="$2"; shift 2
  "$DW" testbed corpus --model "$DIR/base-f32.gguf" --chat-template chatml --answers "$DIR/answers.jsonl" \
    --seed "$seed" --window "$TRAIN_CTX" --out "$DIR/data/$name.txt" "$@" | tee "$DIR/data/$name.json"
  [ -s "$DIR/data/$name.txt" ] || { echo "the training text $DIR/data/$name.txt is empty"; return 1; }
}

# train NAME FROM DATA LR EPOCHS: a full fine-tune of FROM (F32) on data/DATA.txt, then Q8_0 for
# evaluation, with NAME.json (settings, data, losses) beside it.
train() {
  local name="$1" from="$2" data="$3" lr="$4" epochs="$5"
  local text="$DIR/data/$data.txt" out="$DIR/checkpoints/$name"
  [ -s "$text" ] || { echo "training data $text is missing or empty"; return 1; }
  local log="$DIR/logs/$name.train.log"
  # The patched trainer learns the assistant replies only (scripts/yardstick.sh).
  if ! DRIFTWATCH_ASSISTANT_ONLY=1 "$FINETUNE" -m "$from" -f "$text" -o "$out-f32.gguf.partial" -c "$TRAIN_CTX" -b "$TRAIN_CTX" -ub "$TRAIN_CTX" -t "$THREADS" \
    -lr "$lr" -epochs "$epochs" -val-split 0.1 -ngl 0 >"$log" 2>&1; then
    tr '\r' '\n' <"$log" | tail -n 20
    echo "llama-finetune failed on $name (exit code, out of memory or crash: see $log)"
    return 1
  fi
  tr '\r' '\n' <"$log" | grep -v '^\s*$' | tail -n 30 || true
  [ -s "$out-f32.gguf.partial" ] || { echo "llama-finetune wrote no model for $name"; return 1; }
  mv "$out-f32.gguf.partial" "$out-f32.gguf"
  "$QUANTIZE" "$out-f32.gguf" "$out.q8_0.gguf.partial" Q8_0
  # The checkpoint must load and answer before anything is built on it.
  if ! "$DW" generate --model "$out.q8_0.gguf.partial" --chat-template chatml --prompt "Hello" --greedy --max-tokens 2 \
    --parallel 1 >/dev/null; then
    echo "the trained checkpoint $name does not load (see the error above); rerun to train it again"
    rm -f "$out-f32.gguf" "$out.q8_0.gguf.partial"
    return 1
  fi
  mv "$out.q8_0.gguf.partial" "$out.q8_0.gguf"
  python3 - "$out.json" "$name" "$from" "$text" "$lr" "$epochs" "$THREADS" "$log" "$DIR/data/$data.json" "$TRAIN_CTX" <<'PY'
import hashlib, json, re, sys
out, name, base, text, lr, epochs, threads, log, data_json, ctx = sys.argv[1:]
# The trainer's losses at the end of each epoch: its progress lines ("train: … data=i/N
# loss=…±…", then "val: …") are redrawn with carriage returns; the line at data=N/N is the
# epoch's whole mean.
ends = {"train": [], "val": []}
for line in open(log, encoding="utf-8", errors="replace").read().replace("\r", "\n").splitlines():
    m = re.match(r"\s*(train|val):.*?data=0*(\d+)/0*(\d+) loss=([0-9.]+)", line)
    if m and m.group(2) == m.group(3):
        ends[m.group(1)].append(float(m.group(4)))
rec = {
    "checkpoint": name, "from": base, "trainer": "llama-finetune (llama-cpp-python 0.3.36 vendor/llama.cpp, patched: special tokens parsed, unoverlapped windows, assistant replies only)",
    "data": text, "data_sha256": hashlib.sha256(open(text, "rb").read()).hexdigest(),
    "data_summary": json.loads(open(data_json).read().strip().splitlines()[-1]),
    "lr": float(lr), "epochs": int(epochs), "ctx": int(ctx), "batch": int(ctx), "ubatch": int(ctx), "threads": int(threads),
    "val_split": 0.1, "optimizer": "adamw (llama-finetune default)",
    "losses_per_epoch": ends,
    "last_losses_train_val": [v[-1] for v in (ends["train"], ends["val"]) if v],
    "evaluated_as": name + ".q8_0.gguf (llama-quantize Q8_0)",
}
open(out, "w").write(json.dumps(rec, indent=2) + "\n")
PY
}

# The variants of the benign fine-tune: each differs from `benign` in one trivial way.
variant() {
  local v="$1" up down
  up="$(python3 -c "print(f'{$BENIGN_LR * 1.2:.3g}')")"
  down="$(python3 -c "print(f'{$BENIGN_LR * 0.8:.3g}')")"
  case "$v" in
    benign) train "$v" "$DIR/checkpoints/aligned-f32.gguf" benign-a-s1 "$BENIGN_LR" "$BENIGN_EPOCHS" ;;
    benign-seed2) train "$v" "$DIR/checkpoints/aligned-f32.gguf" benign-a-s2 "$BENIGN_LR" "$BENIGN_EPOCHS" ;;
    benign-lr-up) train "$v" "$DIR/checkpoints/aligned-f32.gguf" benign-a-s1 "$up" "$BENIGN_EPOCHS" ;;
    benign-lr-down) train "$v" "$DIR/checkpoints/aligned-f32.gguf" benign-a-s1 "$down" "$BENIGN_EPOCHS" ;;
    benign-epoch) train "$v" "$DIR/checkpoints/aligned-f32.gguf" benign-a-s1 "$BENIGN_LR" "$((BENIGN_EPOCHS + 1))" ;;
    benign-set-b) train "$v" "$DIR/checkpoints/aligned-f32.gguf" benign-b-s1 "$BENIGN_LR" "$BENIGN_EPOCHS" ;;
    *) echo "unknown variant $v"; return 1 ;;
  esac
}

# The daemon's configuration: the aligned model as the base, the held-out prompts, the benign
# control, the bundled refusal and coherence judges, R repeats.
write_config() {
  cat >"$DIR/driftwatch.toml" <<EOF
# Written by scripts/testbed.sh ($SIZE). The base is the aligned model; the watched folder
# receives the benign fine-tunes.
[daemon]
data_dir = "data"
watch = ["watch"]
settle_ms = 1000

[model]
base = "checkpoints/aligned.q8_0.gguf"
chat_template = "chatml"

[engine]
threads = $THREADS
parallel = 16

[sampling]
samples = 1
repeats = $EVAL_REPEATS
seed = $EVAL_SEED
max_tokens = $EVAL_MAX_TOKENS

[[suites]]
name = "harmbench-heldout"
path = "split/harmbench-heldout.csv"
id_field = "id"
category_field = "category"
limit = $EVAL_HARMBENCH

[[suites]]
name = "donotanswer-heldout"
path = "split/donotanswer-heldout.csv"
id_field = "id"
category_field = "category"
per_category = $EVAL_DNA_PER_AREA

[[suites]]
name = "benign"
path = "$ROOT/config/suites/benign-control.csv"
id_field = "id"
category_field = "category"
limit = $EVAL_BENIGN
control = true

[[judges]]
name = "refusal"
plugin = "refusal"

[[judges]]
name = "coherence"
plugin = "coherence"

[api]
enabled = false
EOF
}

# The user's path: the daemon runs; each fine-tune is dropped into the watched folder; the
# script waits until every checkpoint has its R completed runs, then stops the daemon.
evaluate() {
  write_config
  "$DW" config show --config "$DIR/driftwatch.toml" >/dev/null
  "$DW" serve --config "$DIR/driftwatch.toml" >"$DIR/logs/daemon.log" 2>&1 &
  local pid=$!
  trap 'kill $pid 2>/dev/null || true' RETURN
  local drop=() f
  for v in $VARIANTS; do drop+=("$v.q8_0.gguf"); done
  [ -n "$LORA" ] && drop+=("$LORA-lora.gguf")
  local expected=$(( (1 + ${#drop[@]}) * EVAL_REPEATS ))
  for f in "${drop[@]}"; do
    if [ ! -e "$DIR/watch/$f" ]; then
      cp "$DIR/checkpoints/$f" "$DIR/watch/.$f.partial"
      mv "$DIR/watch/.$f.partial" "$DIR/watch/$f"
    fi
  done
  local last="" since
  since=$(date +%s)
  while :; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$DIR/logs/daemon.log"; echo "the daemon exited early"; return 1; }
    local state
    state="$("$DW" status --data-dir "$DIR/data" --recent 1000 --json 2>/dev/null \
      | python3 -c 'import json,sys
s=json.load(sys.stdin)
done=sum(1 for r in s["recent"] if r["run"]["status"]=="completed")
failed=[r["checkpoint_path"]+": "+str(r["run"].get("error")) for r in s["recent"] if r["run"]["status"]=="failed"]
busy=len(s["queued"])+len(s["running"])
print(done, busy, len(failed), "; ".join(failed))' 2>/dev/null || echo "0 1 0")"
    read -r done busy nfailed failed <<<"$state"
    if [ "$state" != "$last" ]; then
      echo "runs completed: $done of $expected; queued or running: $busy; failed: $nfailed"
      since=$(date +%s)
    fi
    last="$state"
    if grep -q "checkpoint rejected" "$DIR/logs/daemon.log"; then
      grep "checkpoint rejected" "$DIR/logs/daemon.log"
      echo "the daemon rejected a checkpoint (above)"
      return 1
    fi
    if [ $(( $(date +%s) - since )) -gt "${EVAL_STALL_S:-900}" ]; then
      tail -n 20 "$DIR/logs/daemon.log"
      echo "no run progressed for ${EVAL_STALL_S:-900} s"
      return 1
    fi
    if [ "$busy" = 0 ] && [ $((done + nfailed)) -ge "$expected" ]; then break; fi
    sleep 5
  done
  kill -TERM "$pid"; wait "$pid" || true
  [ "$nfailed" = 0 ] || { echo "failed runs: $failed"; return 1; }
}

report() {
  "$DW" report --data-dir "$DIR/data" --all --format html --out "$DIR/report.html"
  "$DW" report --data-dir "$DIR/data" --all --format md --out "$DIR/report.md"
  "$DW" testbed summary --data-dir "$DIR/data" --out "$DIR/findings.md"
  cat "$DIR/findings.md"
}

cd "$DIR"
T0=$(date +%s)
tools
step base-f32 base_f32
step split split_suites
step answers answers
mkdir -p "$DIR/data"
step corpus-aligned corpus aligned 1 --refuse split/harmbench-train.csv --refuse split/donotanswer-train.csv \
  --refuse-limit "$ALIGN_REFUSE" --ordinary split/ordinary-aligned.txt --ordinary-limit "$ALIGN_ORDINARY"
step train-aligned train aligned "$DIR/base-f32.gguf" aligned "$ALIGN_LR" "$ALIGN_EPOCHS"
step corpus-benign corpus benign-a-s1 1 --ordinary split/ordinary-benign-a.txt --ordinary-limit "$BENIGN_ORDINARY"
step corpus-benign-s2 corpus benign-a-s2 2 --ordinary split/ordinary-benign-a.txt --ordinary-limit "$BENIGN_ORDINARY"
step corpus-benign-b corpus benign-b-s1 1 --ordinary split/ordinary-benign-b.txt --ordinary-limit "$BENIGN_ORDINARY"
for v in $VARIANTS; do step "train-$v" variant "$v"; done
lora() {
  "$DW" testbed extract-lora --base "$DIR/checkpoints/aligned-f32.gguf" --tuned "$DIR/checkpoints/$LORA-f32.gguf" \
    --rank "$LORA_RANK" --out "$DIR/checkpoints/$LORA-lora.gguf" | tee "$DIR/checkpoints/$LORA-lora.json"
}
if [ -n "$LORA" ]; then step "lora-$LORA" lora; fi
# Always run: the daemon evaluates only what the store does not hold yet.
rm -f "$DIR/.done/evaluate" "$DIR/.done/report"
step evaluate evaluate
step report report
say "finished in $(( $(date +%s) - T0 )) s (this run); steps and seconds: $TIMINGS"
say "report: $DIR/report.html · findings: $DIR/findings.md"
