#!/usr/bin/env python3
"""Import circles among a crate's modules.

Reads every .rs file under a crate's src/, takes each file's references to other modules of
the same crate (`crate::a::b`, `super::x`, `use crate::{a, b}`), and prints the strongly
connected components of more than one file: files that import each other in a circle.
A parent's `mod child;` is not an import, but a parent calling `child::f` is one, and so is a
child using its parent's items (`super::x`).

    python3 scripts/module-cycles.py peerstore-node      # exit 1 if there is a circle

Tests (`#[cfg(test)] mod tests`) are left out: they may use anything.
"""
import os
import re
import sys


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text):
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


def strip_comments(text):
    return re.sub(r"//[^\n]*", "", text)


def resolve(modules, base):
    """The longest prefix of `base` that names a module file."""
    for n in range(len(base), 0, -1):
        if tuple(base[:n]) in modules:
            return tuple(base[:n])
    return None


def refs(text, me, modules):
    out = set()
    # crate::a::b::c and use crate::{a::x, b}
    for m in re.finditer(r"crate::((?:\w+::)*\w+|\{[^;]*?\})", text):
        body = m.group(1)
        if body.startswith("{"):
            for item in re.split(r"[,{}]", body):
                item = item.strip()
                if item:
                    r = resolve(modules, item.split("::"))
                    if r:
                        out.add(r)
        else:
            r = resolve(modules, body.split("::"))
            if r:
                out.add(r)
    # super::x (relative to the file's parent module)
    for m in re.finditer(r"\bsuper::((?:\w+::)*\w+|\{[^;]*?\})", text):
        parent = list(me[:-1])
        body = m.group(1)
        items = [body] if not body.startswith("{") else re.split(r"[,{}]", body)
        for item in items:
            item = item.strip()
            if not item:
                continue
            r = resolve(modules, parent + item.split("::"))
            if r:
                out.add(r)
            elif tuple(parent) in modules:
                out.add(tuple(parent))
    # child::x from a module to its own submodules (a parent that calls into its children)
    for m in re.finditer(r"(?<![\w:])(\w+)::", text):
        child = me + (m.group(1),)
        if child in modules:
            out.add(child)
    out.discard(me)
    return out


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    crate = sys.argv[1] if len(sys.argv) > 1 else "."
    src = os.path.join(crate, "src")
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs") and not (root == src and n == "main.rs"):
                p = os.path.join(root, n)
                files[module_of(src, p)] = p
    modules = set(files)
    graph = {}
    for m, p in files.items():
        with open(p, encoding="utf-8") as f:
            text = strip_comments(strip_tests(f.read()))
        graph[m] = sorted(refs(text, m, modules))
    name = lambda m: "::".join(m) or "crate"
    circles = [sorted(c) for c in sccs(graph) if len(c) > 1]
    print(f"{crate}: {len(files)} module files, {sum(len(v) for v in graph.values())} module imports")
    for c in circles:
        print(f"circle of {len(c)}: " + ", ".join(name(m) for m in c))
    if not circles:
        print("no import circle")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
