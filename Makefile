# PeerStore: the commands a newcomer needs. `make test` is the test command CI runs.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test lint fmt demo bench bench-chord bench-node bench-entangle soak clean

all: build

build:
	$(CARGO) build --release --workspace

## The whole test suite (release build: the simulations are sized for it).
test:
	$(CARGO) test --release --workspace

## Formatting and clippy, warnings are errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Chord scale table (N = 64 .. 4096); writes docs/BENCH-CHORD.md.
bench-chord:
	bash scripts/bench-chord.sh

bench-entangle:
	bash scripts/bench-entangle.sh

bench: bench-chord bench-entangle

clean:
	$(CARGO) clean
