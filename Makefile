# driftwatch: the two commands are `make run` and `make test` (see README.md).
# Both install what is missing first (system packages, the wasm32-wasip2 target, the default
# model and suites) through scripts/setup.sh.
#
#   make run              set up, build, and run the main job on the embedded default: the
#                         daemon with config/driftwatch.toml (base model first, then every
#                         checkpoint dropped into ./checkpoints)
#   make test             set up, check formatting and lints, build, and run the whole test suite
#   make plugins          build the bundled judge plugins into plugins/dist
#   make bench            driftwatch's own throughput benchmark on the default model
#   make bench-vs-llama   the same, side by side with llama.cpp's llama-batched-bench and llama-server
#   make fuzz             cargo fuzz campaigns, 10 minutes per parser (scripts/fuzz.sh)
#   make testbed          the fine-tune testbed: an aligned model, benign fine-tunes of it, and
#                         the daemon catching the regression (about an hour; SIZE=quick: minutes;
#                         docs/reproduction.md). Cached: a rerun only re-evaluates.
#   make PORTABLE=1 ...   build without CPU-specific instructions (slow; see README "Builds")

SHELL := /bin/bash
CARGO ?= cargo

ifeq ($(PORTABLE),1)
# No -C target-cpu: llama.cpp then runs without AVX. Kept in its own target folder so switching
# back and forth does not rebuild llama.cpp each time.
export RUSTFLAGS := -C target-cpu=x86-64
export CARGO_TARGET_DIR := target/portable
endif
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/debug/driftwatch

.PHONY: run test setup build plugins bench bench-vs-llama doctor fuzz testbed

setup:
	@scripts/setup.sh

# The whole workspace, as `make test` builds it: the same packages give the same feature
# unification, so `make run` after `make test` (or the reverse) rebuilds nothing.
build: setup
	$(CARGO) build --workspace

# The bundled judges, built for wasm32-wasip2 (sharing the target folder with the host build).
plugins: setup
	CARGO_TARGET_DIR=$(abspath $(TARGET_DIR)) sh plugins/build.sh

run: build plugins
	$(BIN) serve --config config/driftwatch.toml

# Formatting and lints first (cheap, and a red CI for a lint is a red CI), then every test.
test: setup plugins
	$(CARGO) fmt --check -p driftwatch -p driftwatch-tests
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/yardstick.sh server >/dev/null
	scripts/yardstick.sh quantize >/dev/null
	$(CARGO) test --workspace
	$(CARGO) test --manifest-path plugins/Cargo.toml
	scripts/fuzz.sh smoke 5

bench: build
	$(BIN) bench --model default --prompts 16 --samples 4 --parallel 16 --max-tokens 128

bench-vs-llama: build
	scripts/bench-vs-llama.sh

SIZE ?= full
testbed: build plugins
	DRIFTWATCH_BIN=$(abspath $(BIN)) scripts/testbed.sh $(SIZE)

fuzz: setup
	scripts/fuzz.sh run 600

doctor: build
	$(BIN) doctor
