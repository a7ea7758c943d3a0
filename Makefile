# PeerStore: the commands a newcomer needs. `make test` is the test command CI runs.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test lint fmt demo bench bench-chord bench-node bench-entangle bench-client soak clean

all: build

build:
	$(CARGO) build --release --workspace

## The whole test suite (release build: the simulations and real-process tests are sized for it).
test:
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace
	CARGO="$(CARGO)" bash scripts/test-demo.sh

## Formatting and clippy, warnings are errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Builds, starts a 3-node local ring, backs up an example folder, restores it, shows the diff.
demo:
	bash scripts/demo.sh

## Benchmarks (not tests): each prints its table.
bench: bench-chord bench-node bench-entangle bench-client

bench-chord:
	bash scripts/bench-chord.sh

bench-node:
	bash scripts/bench-node.sh

bench-entangle:
	bash scripts/bench-entangle.sh

bench-client:
	bash scripts/bench-client.sh

clean:
	$(CARGO) clean

## Long runs, not part of `make test`: 16 nodes, 256 MiB entangled, kill 4, repair; once through
## the node's protocol, once through peerstore-client (backup, scrub, kill, repair, audit, restore).
soak:
	$(CARGO) build --release -p peerstore-node --bin peerstore-node
	PEERSTORE_SOAK_MIB=256 $(CARGO) test --release -p peerstore-node --features soak --test entangled_soak -- --nocapture
	PEERSTORE_ENT_MIB=256 $(CARGO) test --release -p peerstore-testkit --test e2e_entangled -- --nocapture entangled_backup
