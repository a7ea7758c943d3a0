#!/usr/bin/env python3
"""Generates the client benchmark datasets with a fixed seed (same bytes on every run).

  A: 1,000 files of 1-64 KiB in nested directories (~32 MiB)
  B: 8 files of 32 MiB (256 MiB)

Usage: gen-dataset.py OUT_DIR [--only A|B] [--seed N]
Creates OUT_DIR/A and OUT_DIR/B. Content is pseudo-random (incompressible, no duplicates).
"""
import argparse
import os
import random
import sys


def fill(rng, n):
    return rng.randbytes(n)


def gen_a(root, seed):
    rng = random.Random(seed)
    total = 0
    for i in range(1000):
        d = os.path.join(root, f"dir{i % 10:02d}", f"sub{(i // 10) % 10:02d}")
        os.makedirs(d, exist_ok=True)
        size = rng.randint(1024, 64 * 1024)
        with open(os.path.join(d, f"file{i:04d}.dat"), "wb") as f:
            f.write(fill(rng, size))
        total += size
    return total


def gen_b(root, seed):
    rng = random.Random(seed + 1)
    os.makedirs(root, exist_ok=True)
    total = 0
    for i in range(8):
        with open(os.path.join(root, f"big{i}.bin"), "wb") as f:
            for _ in range(32):
                f.write(fill(rng, 1 << 20))
        total += 32 << 20
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--only", choices=["A", "B"])
    p.add_argument("--seed", type=int, default=20261121)
    a = p.parse_args()
    if a.only in (None, "A"):
        n = gen_a(os.path.join(a.out, "A"), a.seed)
        print(f"dataset A: 1000 files, {n / 2**20:.1f} MiB in {os.path.join(a.out, 'A')}")
    if a.only in (None, "B"):
        n = gen_b(os.path.join(a.out, "B"), a.seed)
        print(f"dataset B: 8 files, {n / 2**20:.1f} MiB in {os.path.join(a.out, 'B')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
