# PeerStore: the commands a newcomer needs. `make test` is the test command CI runs.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test lint fmt demo bench bench-chord bench-node bench-entangle bench-client soak fuzz clean bench-sync bench-chain bench-restore bench-alt bench-settle

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
bench: bench-chord bench-node bench-entangle bench-client bench-alt bench-settle bench-sync bench-chain

bench-chord:
	bash scripts/bench-chord.sh

bench-node:
	bash scripts/bench-node.sh

bench-entangle:
	bash scripts/bench-entangle.sh

bench-client:
	bash scripts/bench-client.sh

## Backup and restore speed, entanglement on against off, both rings up at once and taking turns.
bench-alt:
	bash scripts/bench-alt.sh

## What a backup costs until the ring settles (CPU and disk for 13 minutes), entanglement on and off.
bench-settle:
	bash scripts/bench-settle.sh

# The former name of bench-alt (it measured restores only).
bench-restore: bench-alt

bench-sync:
	bash scripts/bench-sync.sh

## Reads of one record from any chain member (CRAQ) against the tail only, 5-node ring.
bench-chain:
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release -p peerstore-testkit --test e2e_chain -- --ignored --nocapture bench

## Long property-based fuzzing of every decoder of network and disk input (frames of the four
## protocols, entangled and root records, manifests, snapshots, key files), 200000 cases per
## property instead of the 256 of `make test`. About 6 minutes on a 2-core machine (20000 cases
## took frames 12 s, records 2 s, client 25 s; a full run took 98 s, 20 s and 247 s plus builds).
fuzz:
	PEERSTORE_FUZZ_CASES=200000 $(CARGO) test --release -p peerstore-proto --test fuzz_frames
	PEERSTORE_FUZZ_CASES=200000 $(CARGO) test --release -p peerstore-node --test fuzz_records
	PEERSTORE_FUZZ_CASES=200000 $(CARGO) test --release -p peerstore-client --test fuzz_client

clean:
	$(CARGO) clean

## Long runs, not part of `make test`: 16 nodes, 256 MiB entangled, kill 4, repair; once through
## the node's protocol, once through peerstore-client (backup, scrub, kill, repair, audit, restore).
soak:
	$(CARGO) build --release -p peerstore-node --bin peerstore-node
	PEERSTORE_SOAK_MIB=256 $(CARGO) test --release -p peerstore-node --features soak --test entangled_soak -- --nocapture
	PEERSTORE_ENT_MIB=256 $(CARGO) test --release -p peerstore-testkit --test e2e_entangled -- --nocapture entangled_backup
