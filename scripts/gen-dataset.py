#!/usr/bin/env python3
"""Generates the client benchmark datasets with a fixed seed (same bytes on every run).

  A: 1,000 files of 1-64 KiB in nested directories (~32 MiB)
  B: 8 files of 32 MiB (256 MiB)
  C: a source tree: 10,000 files in ~440 nested directories 3-6 levels deep, 10-50 entries
     each (~150 MiB). Sizes follow a real source tree's distribution: log-normal with a median
     of 5 KiB (half the files between 2 and 12 KiB), 1% empty, and a long tail (3% of the
     files drawn around 64 KiB, up to 4 MiB: about 10 over 1 MiB, which span several chunks).

Usage: gen-dataset.py OUT_DIR [--only A|B|C] [--seed N]
Creates OUT_DIR/A, OUT_DIR/B and OUT_DIR/C (or the one of --only). Content is pseudo-random
(incompressible, no duplicates), so restic's compression gains nothing either.
"""
import argparse
import math
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


C_FILES = 10_000
C_MAX_SIZE = 4 << 20
EXTS = [".rs", ".c", ".h", ".py", ".go", ".js", ".ts", ".md", ".toml", ".json", ".txt", ".sh"]
WORDS = ["core", "util", "net", "io", "fs", "proto", "codec", "store", "test", "bench", "api",
         "cli", "config", "error", "model", "sync", "cache", "pack", "walk", "ring", "node", "peer"]


def c_size(rng):
    """One file size of a source tree (see the module doc)."""
    r = rng.random()
    if r < 0.01:
        return 0
    if r < 0.97:
        median, sigma = 5 * 1024, 1.2
    else:  # the tail: generated tables, test vectors, vendored blobs
        median, sigma = 64 * 1024, 1.6
    return min(C_MAX_SIZE, max(1, int(rng.lognormvariate(math.log(median), sigma))))


def gen_c(root, seed):
    rng = random.Random(seed + 2)
    # The skeleton: directories 1-2 deep always have 2-4 subdirectories (so every leaf is at
    # least 3 deep), 3-5 deep have 0-3, 6 deep none.
    dirs = []  # (path, depth, subdirectory count)
    def skeleton(path, depth):
        if depth == 0:
            n = 8
        elif depth < 3:
            n = rng.randint(2, 4)
        elif depth < 6:
            n = rng.choice([0, 0, 1, 2, 3])
        else:
            n = 0
        dirs.append((path, depth, n))
        used = set()
        for _ in range(n):
            name = rng.choice(WORDS)
            while name in used:
                name = rng.choice(WORDS) + str(rng.randint(0, 99))
            used.add(name)
            skeleton(os.path.join(path, name), depth + 1)
    skeleton(root, 0)
    # Files per directory: 10-50 entries in all, adjusted one at a time to add up to C_FILES.
    counts = [rng.randint(max(0, 10 - n), 50 - n) if d > 0 else 2 for _, d, n in dirs]
    while sum(counts) != C_FILES:
        i = rng.randrange(1, len(dirs))
        n = dirs[i][2]
        if sum(counts) < C_FILES and counts[i] + n < 50:
            counts[i] += 1
        elif sum(counts) > C_FILES and counts[i] + n > 10:
            counts[i] -= 1
    total = 0
    for (path, _, _), k in zip(dirs, counts):
        os.makedirs(path, exist_ok=True)
        for j in range(k):
            name = f"{rng.choice(WORDS)}_{j:02d}{rng.choice(EXTS)}"
            size = c_size(rng)
            with open(os.path.join(path, name), "wb") as f:
                f.write(fill(rng, size))
            total += size
    return total, len(dirs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--only", choices=["A", "B", "C"])
    p.add_argument("--seed", type=int, default=20261121)
    a = p.parse_args()
    if a.only in (None, "A"):
        n = gen_a(os.path.join(a.out, "A"), a.seed)
        print(f"dataset A: 1000 files, {n / 2**20:.1f} MiB in {os.path.join(a.out, 'A')}")
    if a.only in (None, "B"):
        n = gen_b(os.path.join(a.out, "B"), a.seed)
        print(f"dataset B: 8 files, {n / 2**20:.1f} MiB in {os.path.join(a.out, 'B')}")
    if a.only in (None, "C"):
        n, d = gen_c(os.path.join(a.out, "C"), a.seed)
        print(f"dataset C: {C_FILES} files in {d} directories, {n / 2**20:.1f} MiB in {os.path.join(a.out, 'C')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
