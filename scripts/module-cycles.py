#!/usr/bin/env python3
"""Import graph between the top-level modules of a crate's src/: every `crate::X`
(and `super::X` from a top-level file) counts as a dependency of the module the file
belongs to on X. Prints each strongly connected component with more than one module
(an import cycle) and exits 1 if there is one.

    scripts/module-cycles.py controller/src agent/src core/src
"""
import os
import re
import sys


def modules(src):
    mods = set()
    for name in os.listdir(src):
        if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            mods.add(name[:-3])
        elif os.path.isdir(os.path.join(src, name)):
            mods.add(name)
    return mods


def owner(src, path):
    rel = os.path.relpath(path, src).split(os.sep)
    top = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    return top


def strip_tests(text):
    # Code under #[cfg(test)] is not part of the layering.
    at = text.find("#[cfg(test)]")
    return text if at < 0 else text[:at]


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            me = owner(src, path)
            if me not in mods:
                continue
            text = strip_tests(open(path, encoding="utf-8").read())
            # Comments (doc links included) are not imports.
            text = re.sub(r"//[^\n]*", "", text)
            names = set(re.findall(r"\bcrate::(\w+)", text))
            # `use crate::{a, b::c}` groups
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                names |= set(re.findall(r"(?:^|,)\s*(\w+)", group))
            if os.path.dirname(path) == src:
                names |= set(re.findall(r"\bsuper::(\w+)", text))
            for n in names:
                if n in mods and n != me:
                    edges[me].add(n)
    return edges


def sccs(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    bad = False
    for src in sys.argv[1:]:
        edges = graph(src)
        cycles = sccs(edges)
        print(f"{src}: {len(edges)} modules, {sum(len(e) for e in edges.values())} edges, {len(cycles)} cycle(s)")
        for c in cycles:
            bad = True
            print("  cycle: " + " <-> ".join(c))
            for m in c:
                inner = sorted(n for n in edges[m] if n in c)
                print(f"    {m} -> {', '.join(inner)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
