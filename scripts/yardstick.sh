#!/usr/bin/env bash
# Builds llama.cpp's own throughput tool, `llama-batched-bench`, and its OpenAI-compatible
# `llama-server`, as the yardsticks for `driftwatch bench`, and its trainer `llama-finetune` and
# `llama-quantize` for the fine-tune testbed (scripts/testbed.sh). The llama-cpp-sys-2 crate leaves llama.cpp's tools out, so the tree comes
# from the source distribution of the Python package llama-cpp-python==0.3.36
# (vendor/llama.cpp). Nothing of it enters this repository: it is built in the cache.
#
#   scripts/yardstick.sh          prints the path of llama-batched-bench (building it once)
#   scripts/yardstick.sh server   the same for llama-server
#   scripts/yardstick.sh finetune / quantize   the same for llama-finetune / llama-quantize
#   env: YARDSTICK_LLAMAFILE=OFF   build (in its own folder) without llama.cpp's llamafile
#        kernels, as driftwatch is built (.cargo/config.toml), for like-for-like ratios
set -euo pipefail
case "${1:-batched-bench}" in
  batched-bench) TOOL=llama-batched-bench ;;
  server) TOOL=llama-server ;;
  finetune) TOOL=llama-finetune ;;
  quantize) TOOL=llama-quantize ;;
  *) echo "usage: scripts/yardstick.sh [batched-bench|server|finetune|quantize]" >&2; exit 2 ;;
esac
CACHE="${DRIFTWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftwatch}"
DIR="$CACHE/yardstick"
LLAMAFILE="${YARDSTICK_LLAMAFILE:-ON}"
case "$LLAMAFILE" in
  ON) BUILD="$DIR/build" ;;
  OFF) BUILD="$DIR/build-llamafile-off" ;;
  *) echo "YARDSTICK_LLAMAFILE is ON or OFF, not $LLAMAFILE" >&2; exit 2 ;;
esac
BIN="$BUILD/bin/$TOOL"
# The trainer carries driftwatch's patches (below); a build from before the current ones is
# rebuilt. The other tools are llama.cpp's own.
PATCHES=3
STAMP="$BIN.driftwatch-patches-$PATCHES"
if [ -x "$BIN" ] && { [ "$TOOL" != llama-finetune ] || [ -f "$STAMP" ]; }; then echo "$BIN"; exit 0; fi
mkdir -p "$DIR"
if [ ! -d "$DIR/src" ]; then
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==0.3.36" -d "$tmp" >&2
  mkdir -p "$DIR/src"
  tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$DIR/src" --strip-components=1
  rm -rf "$tmp"
fi
SRC="$DIR/src/vendor/llama.cpp"
[ -f "$SRC/tools/batched-bench/batched-bench.cpp" ] || { echo "no batched-bench in $SRC" >&2; exit 1; }
# llama-finetune tokenizes its training text without parsing special tokens, so a chat
# template's markers (`<|im_start|>`) would be learnt as plain text, never as the tokens the
# model sees at evaluation. One argument turns parsing on; the check fails loudly if the pinned
# source ever changes shape.
FT="$SRC/examples/training/finetune.cpp"
if grep -q 'common_tokenize(ctx, params.prompt, true);' "$FT"; then
  sed -i 's|common_tokenize(ctx, params.prompt, true);|common_tokenize(ctx, params.prompt, true, /*parse_special =*/ true);|' "$FT"
fi
grep -q 'parse_special =\*/ true' "$FT" || { echo "could not enable special tokens in $FT" >&2; exit 1; }
# Its windows of n_ctx tokens overlap by half (stride n_ctx / 2), so every token is trained on
# twice an epoch. The testbed packs its conversations into windows of n_ctx tokens (`testbed
# corpus --window`: none crosses a window's end), so unoverlapped windows lose nothing, and
# training takes half the time: the stride becomes n_ctx.
if grep -q 'common_opt_dataset_init(ctx, tokens, llama_n_ctx(ctx) / 2)' "$FT"; then
  sed -i 's|common_opt_dataset_init(ctx, tokens, llama_n_ctx(ctx) / 2)|common_opt_dataset_init(ctx, tokens, llama_n_ctx(ctx))|' "$FT"
fi
grep -q 'common_opt_dataset_init(ctx, tokens, llama_n_ctx(ctx))' "$FT" || { echo "could not set the stride in $FT" >&2; exit 1; }
# It learns every token of the text, the users' requests included, so a model trained on
# chat text learns to write harmful requests as much as to refuse them (measured: the
# testbed's aligned model, three epochs at lr 1e-4, answered held-out harmful prompts with
# more of them). With DRIFTWATCH_ASSISTANT_ONLY set, only the assistant replies of ChatML text
# are learnt: every other position's label becomes -1, which leaves its one-hot row all zeros:
# no loss, and (with the ggml patch below) no gradient.
python3 - "$FT" "$SRC/src/llama-context.cpp" "$SRC/ggml/src/ggml-cpu/ops.cpp" <<'PY'
import sys
ft, lc = sys.argv[1], sys.argv[2]
s = open(ft).read()
if "driftwatch: assistant-only" not in s:
    anchor = "ggml_opt_dataset_t       dataset = common_opt_dataset_init(ctx, tokens, llama_n_ctx(ctx));\n"
    assert anchor in s, "finetune.cpp changed shape"
    s = s.replace(anchor, anchor + r"""
    // driftwatch: assistant-only. With DRIFTWATCH_ASSISTANT_ONLY set, only the assistant
    // replies of ChatML text (from after "<|im_start|>assistant\n" to its "<|im_end|>") are
    // learnt; every other label becomes -1, which the loss skips.
    if (getenv("DRIFTWATCH_ASSISTANT_ONLY")) {
        const std::vector<llama_token> start = common_tokenize(ctx, "<|im_start|>assistant\n", false, true);
        const std::vector<llama_token> end   = common_tokenize(ctx, "<|im_end|>", false, true);
        if (end.size() != 1) {
            LOG_ERR("%s: the model has no <|im_end|> token: assistant-only training needs ChatML\n", __func__);
            return 1;
        }
        std::vector<char> learn(tokens.size(), 0);
        for (size_t i = 0; i + start.size() <= tokens.size(); ++i) {
            if (!std::equal(start.begin(), start.end(), tokens.begin() + i)) {
                continue;
            }
            size_t j = i + start.size();
            for (; j < tokens.size(); ++j) {
                learn[j] = 1;
                if (tokens[j] == end[0]) {
                    break;
                }
            }
            i = j;
        }
        const int64_t n_pos = llama_n_ctx(ctx);
        const int64_t n_data = ggml_opt_dataset_ndata(dataset);
        llama_token * lab = (llama_token *) ggml_opt_dataset_labels(dataset)->data;
        int64_t kept = 0;
        for (int64_t d = 0; d < n_data; ++d) {
            for (int64_t p = 0; p < n_pos; ++p) {
                if (learn[d*n_pos + p + 1]) {
                    kept++;
                } else {
                    lab[d*n_pos + p] = -1;
                }
            }
        }
        LOG_INF("%s: driftwatch: learning %lld of %lld labels (assistant replies only)\n", __func__,
                (long long) kept, (long long) (n_data*n_pos));
        if (kept == 0) {
            LOG_ERR("%s: no assistant reply found in the training text\n", __func__);
            return 1;
        }
    }
""")
    s = s.replace("#include <vector>\n", "#include <vector>\n#include <algorithm>\n#include <cstdlib>\n", 1)
    open(ft, "w").write(s)
c = open(lc).read()
old = "GGML_ASSERT(labels_sparse[ilabel] < labels->ne[0]);"
if "driftwatch: a label of -1" not in c:
    assert old in c, "llama-context.cpp changed shape"
    c = c.replace(old, "if (labels_sparse[ilabel] < 0) { continue; } // driftwatch: a label of -1 is not learnt\n                    " + old)
    open(lc, "w").write(c)
# ggml's cross-entropy gradient is (softmax - label) for every row, so a row of zeros (a position
# the assistant-only trainer does not learn) still gets softmax as its gradient: training pushed
# down whatever the model predicted at every prompt and padding position, and the trained
# models wrote word salad ("I I I I Citiz Hawk Nure Adela…", measured on the testbed's aligned
# model). A row whose labels sum to zero gets no gradient.
ops = sys.argv[3]
o = open(ops).read()
if "driftwatch: an unlearnt row" not in o:
    anchor = "        // soft_max\n        float max = -INFINITY;\n        ggml_vec_max_f32(nc, &max, s0);\n        const ggml_float sum = ggml_vec_soft_max_f32(nc, ds0, s0, max);"
    assert o.count(anchor) == 1, "ggml-cpu/ops.cpp changed shape"
    o = o.replace(anchor, """        // driftwatch: an unlearnt row (labels all zero) has no gradient.
        {
            float s1_sum = 0.0f;
            ggml_vec_sum_f32(nc, &s1_sum, s1);
            if (s1_sum == 0.0f) {
                memset(ds0, 0, nc*sizeof(float));
                continue;
            }
        }
""" + anchor, 1)
    open(ops, "w").write(o)
PY
# Same CPU features as driftwatch's default build (-C target-cpu=native → GGML_NATIVE), OpenMP on,
# and, like it (.cargo/config.toml), without llama.cpp's AMX kernels, which crash on the default
# model where the CPU has AMX.
NO_AMX="-U__AMX_TILE__ -U__AMX_INT8__ -U__AMX_BF16__"
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DGGML_LLAMAFILE="$LLAMAFILE" \
  -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$BUILD" --target "$TOOL" -j "$(nproc)" >&2
[ "$TOOL" != llama-finetune ] || touch "$STAMP"
echo "$BIN"
